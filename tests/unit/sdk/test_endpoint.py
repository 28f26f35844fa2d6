"""Which engine the SDK talks to: ``HUTCH_ENGINE``, then the context, then the local one;
and the clear errors for what cannot work."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hutch.api import paths
from hutch.engine.remote import credentials
from hutch.exception import InvalidError, NotFoundError
from hutch.sdk import contexts, endpoint, sshforward


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HUTCH_RUNTIME_DIR", str(tmp_path / "run"))
    for name in ("HUTCH_ENGINE", "HUTCH_ENGINE_CREDENTIALS", "HUTCH_CONTEXT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    credentials.ensure_server(tmp_path / "data", [])
    return credentials.issue_client(tmp_path / "data", "me", tmp_path / "bundle")


def test_the_local_engine_by_default() -> None:
    where = endpoint.current()
    assert where.local and where.unix == str(paths.socket_path())
    assert where.header_lines() == []


def test_https_with_its_bundle(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    monkeypatch.setenv("HUTCH_ENGINE", "https://engine.example:7443")
    monkeypatch.setenv("HUTCH_ENGINE_CREDENTIALS", str(bundle))
    where = endpoint.current()
    assert (where.host, where.port, where.local, where.unix) == ("engine.example", 7443,
                                                                 False, None)
    token = (bundle / "token").read_text().strip()
    assert where.header_lines() == [f"Authorization: Bearer {token}"]
    assert token not in repr(where)


@pytest.mark.parametrize(("url", "message"), [
    ("http://engine:80", "http:// is refused"),
    ("https://engine:99999", "the port is a number"),
    ("ssh://me@engine:abc", "the port is a number"),
    ("https://engine", "names a host and a port"),
    ("unix://relative", "absolute path"),
    ("ftp://x", "unix://, https:// or ssh://"),
])
def test_bad_engine_urls(monkeypatch: pytest.MonkeyPatch, url: str, message: str) -> None:
    monkeypatch.setenv("HUTCH_ENGINE", url)
    with pytest.raises(InvalidError, match=message):
        endpoint.current()


def test_https_without_credentials_says_what_to_set(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("HUTCH_ENGINE", "https://engine:7443")
    with pytest.raises(InvalidError, match="HUTCH_ENGINE_CREDENTIALS"):
        endpoint.current()
    monkeypatch.setenv("HUTCH_ENGINE_CREDENTIALS", str(tmp_path))
    with pytest.raises(NotFoundError, match=r"lacks ca\.crt, client\.crt, client\.key, token"):
        endpoint.current()
    monkeypatch.setenv("HUTCH_ENGINE_CREDENTIALS", str(tmp_path / "missing"))
    with pytest.raises(NotFoundError, match="does not exist"):
        endpoint.current()


def test_tls_failures_say_what_they_likely_mean(monkeypatch: pytest.MonkeyPatch,
                                                bundle: Path) -> None:
    import ssl

    monkeypatch.setenv("HUTCH_ENGINE", "https://devbox.example:7443")
    monkeypatch.setenv("HUTCH_ENGINE_CREDENTIALS", str(bundle))
    where = endpoint.current()
    mismatch = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                               "verify failed: Hostname mismatch")
    assert "--host devbox.example" in where.diagnosis(mismatch)
    other_ca = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                               "verify failed: unable to get local issuer")
    assert "not of this bundle's CA" in where.diagnosis(other_ca)
    assert "refuses the client certificate" in where.diagnosis(ConnectionResetError())
    assert endpoint.Endpoint(url="unix:///x", unix="/x").diagnosis(ConnectionResetError()) \
        == ""


def test_contexts_choose_and_the_environment_overrides(monkeypatch: pytest.MonkeyPatch,
                                                       bundle: Path) -> None:
    contexts.create("vm", "https://vm.example:7443", str(bundle))
    contexts.create("box", "ssh://me@box.example:2222/run/engine.sock",
                    ssh_options=["-i", "/k"])
    assert endpoint.current().local  # created, not used yet
    contexts.use("vm")
    assert endpoint.current().host == "vm.example"
    assert stat.S_IMODE((contexts.config_dir() / "contexts.json").stat().st_mode) == 0o600
    monkeypatch.setenv("HUTCH_CONTEXT", "box")
    boxed = endpoint.current()
    assert boxed.ssh and boxed.ssh_options == ("-i", "/k") and boxed.unix is not None
    monkeypatch.setenv("HUTCH_ENGINE", "unix:///elsewhere.sock")
    assert endpoint.current().unix == "/elsewhere.sock"
    monkeypatch.delenv("HUTCH_ENGINE")
    monkeypatch.delenv("HUTCH_CONTEXT")
    current, found = contexts.listed()
    assert current == "vm" and [c.name for c in found] == ["default", "box", "vm"]
    contexts.remove("vm")
    assert endpoint.current().local  # removing the current one goes back to default


def test_context_mistakes(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidError, match="local engine"):
        contexts.create("default", "https://x:1")
    with pytest.raises(InvalidError, match="https://, ssh:// or unix://"):
        contexts.create("a", "tcp://x:1")
    with pytest.raises(InvalidError, match="name"):
        contexts.create("../a", "https://x:1")
    contexts.create("a", "https://x:1", str(bundle))
    with pytest.raises(InvalidError, match="exists"):
        contexts.create("a", "https://y:1", str(bundle))
    with pytest.raises(InvalidError, match="needs --credentials"):
        contexts.create("b", "https://y:1")
    with pytest.raises(InvalidError, match="for https:// engines"):
        contexts.create("b", "ssh://me@host", str(bundle))
    with pytest.raises(InvalidError, match="for ssh:// engines"):
        contexts.create("b", "https://y:1", str(bundle), ["-i", "key"])
    with pytest.raises(NotFoundError, match="not a hutch client bundle"):
        contexts.create("b", "https://y:1", str(bundle.parent))
    with pytest.raises(InvalidError, match="cannot be removed"):
        contexts.remove("default")
    with pytest.raises(NotFoundError):
        contexts.use("missing")
    monkeypatch.setenv("HUTCH_CONTEXT", "missing")
    with pytest.raises(NotFoundError, match="does not exist"):
        endpoint.current()


@pytest.mark.parametrize("url", ["ssh://", "ssh://me:pw@host", "ssh://host?x=1",
                                 "ssh://-oProxyCommand=x", "https://host"])
def test_bad_ssh_urls(url: str) -> None:
    with pytest.raises(InvalidError):
        sshforward.local_socket(url)


def test_an_ssh_forward_that_cannot_connect_says_why(monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """ssh itself runs (BatchMode: it never prompts) and its own message comes back."""
    if not Path("/usr/bin/ssh").exists():
        pytest.skip("no ssh client")
    monkeypatch.setenv("HUTCH_SSH_OPTIONS", "-o ConnectTimeout=5")
    url = "ssh://nobody@127.0.0.1:1/run/engine.sock"
    from hutch.exception import ConnectionError

    with pytest.raises(ConnectionError, match="Connection refused"):
        sshforward.ensure(url, sshforward.local_socket(url))
