"""The remote engine's credentials, made with the real ``openssl``: who may connect, and
that what is written is readable by the engine's user only."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from hutch.engine.errors import Invalid
from hutch.engine.remote import credentials


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-ext",
                           "subjectAltName"], capture_output=True, text=True,
                          check=True).stdout


def test_server_certificate_names_and_modes(tmp_path: Path) -> None:
    where = credentials.ensure_server(tmp_path, ["engine.example", "10.0.0.7"])
    assert _mode(where) == 0o700
    for name in ("ca.key", "server.key", "ca.crt", "server.crt"):
        assert _mode(where / name) == 0o600, name
    sans = _sans(where / "server.crt")
    for name in ("DNS:engine.example", "IP Address:10.0.0.7", "IP Address:127.0.0.1",
                 "DNS:localhost"):
        assert name in sans
    made = (where / "server.crt").stat().st_mtime_ns
    credentials.ensure_server(tmp_path, ["ENGINE.example", "10.0.0.7"])  # the same names
    assert (where / "server.crt").stat().st_mtime_ns == made
    credentials.ensure_server(tmp_path, ["other.example"])
    assert "DNS:other.example" in _sans(where / "server.crt")
    assert "engine.example" not in _sans(where / "server.crt")


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "a b", "x" * 254, "a..b", "",
                                  "::1%x,DNS:evil.example", "::1%x\nbasicConstraints=x",
                                  "a,DNS:b", "fe80::1%eth0"])
def test_bad_host_names_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(Invalid):
        credentials.ensure_server(tmp_path, [host])


def test_a_bundle_admits_its_token_until_revoked_or_reissued(tmp_path: Path) -> None:
    data = tmp_path / "data"
    credentials.ensure_server(data, [])
    bundle = credentials.issue_client(data, "laptop", tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == sorted(credentials.BUNDLE_FILES)
    assert _mode(bundle) == 0o700
    assert all(_mode(p) == 0o600 for p in bundle.iterdir())
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(bundle / "ca.crt"),
                             "-purpose", "sslclient", str(bundle / "client.crt")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    as_server = subprocess.run(["openssl", "verify", "-CAfile", str(bundle / "ca.crt"),
                                "-purpose", "sslserver", str(bundle / "client.crt")],
                               capture_output=True, text=True)
    assert as_server.returncode != 0  # a client's certificate cannot pass as the server's
    text = subprocess.run(["openssl", "x509", "-in", str(bundle / "client.crt"), "-noout",
                           "-text"], capture_output=True, text=True, check=True).stdout
    assert "CA:FALSE" in text and "Digital Signature" in text
    token = (bundle / "token").read_text().strip()
    assert credentials.client_of(data, token) == "laptop"
    assert credentials.client_of(data, token + "x") is None
    assert token not in "".join(p.read_text() for p in
                                (credentials.remote_dir(data) / "clients").iterdir())
    again = credentials.issue_client(data, "laptop", tmp_path / "again")
    assert credentials.client_of(data, token) is None  # the old bundle is out
    new = (again / "token").read_text().strip()
    assert credentials.client_of(data, new) == "laptop"
    assert credentials.clients(data) == ["laptop"]
    assert credentials.revoke(data, "laptop") and not credentials.revoke(data, "laptop")
    assert credentials.client_of(data, new) is None


def test_a_bundle_needs_a_ca_and_a_new_directory(tmp_path: Path) -> None:
    with pytest.raises(credentials.CredentialError, match="no remote CA"):
        credentials.issue_client(tmp_path, "a", tmp_path / "out")
    credentials.ensure_server(tmp_path, [])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(Invalid, match="not empty"):
        credentials.issue_client(tmp_path, "a", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(Invalid, match="client's name"):
        credentials.issue_client(tmp_path, "../escape", tmp_path / "out")
