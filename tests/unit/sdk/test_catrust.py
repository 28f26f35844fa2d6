"""hutch.sdk.catrust: the engine's CA added to what this process trusts, through the
variables OpenSSL and requests read when they connect."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from hutch.sdk import catrust

PEM = "-----BEGIN CERTIFICATE-----\nhutch-test-ca\n-----END CERTIFICATE-----\n"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HUTCH_RUNTIME_DIR", str(tmp_path / "run"))
    base = tmp_path / "base.pem"
    base.write_text("-----BEGIN CERTIFICATE-----\nbase-ca\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(base))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("HUTCH_TRUST_CA", raising=False)
    monkeypatch.setattr(catrust, "_trusted", set())
    return base


def test_the_bundle_holds_what_was_trusted_and_the_engines_ca(isolated: Path) -> None:
    bundle = catrust.trust(PEM)
    assert bundle is not None and bundle.parent.stat().st_mode & 0o777 == 0o700
    assert bundle.read_text() == isolated.read_text() + PEM  # a superset: nothing dropped
    assert ssl.get_default_verify_paths().cafile == str(bundle)  # what OpenSSL will load
    import os

    assert os.environ["REQUESTS_CA_BUNDLE"] == str(bundle)
    assert catrust.trust(PEM) == bundle  # once is enough
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]  # no partial left


def test_a_users_own_requests_bundle_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/their/bundle.pem")
    catrust.trust(PEM)
    import os

    assert os.environ["REQUESTS_CA_BUNDLE"] == "/their/bundle.pem"


def test_hutch_trust_ca_0_leaves_the_process_alone(isolated: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_TRUST_CA", "0")
    assert catrust.trust(PEM) is None
    import os

    assert os.environ["SSL_CERT_FILE"] == str(isolated)
