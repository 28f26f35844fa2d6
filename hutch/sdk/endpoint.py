"""Which engine the SDK talks to, and how: this user's own on its Unix socket (started on
first use), or one on another machine, as ``DOCKER_HOST`` and ``podman --url`` choose.

In order, the first that is set wins:

1. ``HUTCH_ENGINE``: ``unix:///path/engine.sock``, ``https://HOST:PORT`` (an engine served
   with ``hutch engine serve --listen``; its client bundle, from ``hutch engine
   remote-credentials``, in ``HUTCH_ENGINE_CREDENTIALS``) or ``ssh://[USER@]HOST[:PORT]
   [/remote/engine.sock]`` (the engine's socket forwarded by ``ssh``, :mod:`.sshforward`);
2. ``HUTCH_CONTEXT``, then the context chosen with ``hutch context use``
   (:mod:`.contexts`): a name for one of those URLs and its credentials;
3. the local engine (``hutch.api.paths``).

A remote engine is never started by the SDK (it is someone's running service, or reached
through ssh where ``hutch engine socket`` starts it); the local one is.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hutch.api import paths
from hutch.exception import InvalidError
from hutch.sdk import contexts


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: a Unix socket (``unix``), or TLS to ``host``:``port``."""

    url: str
    unix: str | None = None
    host: str | None = None
    port: int | None = None
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    token: str | None = field(default=None, repr=False)
    #: The local engine: the SDK may start it.
    local: bool = False
    #: ``ssh://``: the socket is a forward the SDK keeps up (:mod:`.sshforward`), with
    #: these options of a context besides ``HUTCH_SSH_OPTIONS``.
    ssh: bool = False
    ssh_options: tuple[str, ...] = ()

    def header_lines(self) -> list[str]:
        """What every request carries besides the SDK's own headers."""
        return [f"Authorization: Bearer {self.token}"] if self.token else []

    def diagnosis(self, failure: BaseException | None = None) -> str:
        """What the transport adds to a failed connection's message: what ssh said, or
        what a TLS failure most likely means."""
        if self.ssh:
            from hutch.sdk import sshforward

            words = sshforward.said(self.url)
            return f" (ssh said: {words})" if words else ""
        if self.tls is None or failure is None:
            return ""
        text = repr(failure) + repr(failure.__cause__)
        if "Hostname mismatch" in text or "IP address mismatch" in text:
            return (f" (the engine's certificate does not name {self.host}: on the engine's "
                    f"machine, `hutch engine remote-credentials --host {self.host}` adds it)")
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return " (the engine's certificate is not of this bundle's CA)"
        return (" (the engine's gateway ends the connection when it refuses the client "
                "certificate: is HUTCH_ENGINE_CREDENTIALS a bundle this engine issued?)")

    def prepare(self) -> None:
        """Make the endpoint reachable (an ssh forward is started, or started again when
        its ssh ended); blocking."""
        if self.ssh:
            from hutch.sdk import sshforward

            sshforward.ensure(self.url, self.unix or "", list(self.ssh_options))


_lock = threading.Lock()
_cache: dict[tuple[str, ...], Endpoint] = {}


def current() -> Endpoint:
    """The endpoint the environment and the chosen context name (cached by them)."""
    url, credentials, ssh_options = _chosen()
    key = (url, credentials or "", " ".join(ssh_options), str(paths.socket_path()))
    with _lock:
        found = _cache.get(key)
        if found is None:
            found = _cache[key] = _make(url, credentials, ssh_options)
        return found


def _chosen() -> tuple[str, str | None, list[str]]:
    engine = os.environ.get("HUTCH_ENGINE", "").strip()
    if engine:
        return engine, os.environ.get("HUTCH_ENGINE_CREDENTIALS") or None, []
    context = contexts.chosen()
    if context is None:
        return "", None, []
    return context.engine, context.credentials, context.ssh_options


def _make(url: str, credentials: str | None, ssh_options: list[str]) -> Endpoint:
    if not url:
        return Endpoint(url=f"unix://{paths.socket_path()}", unix=str(paths.socket_path()),
                        local=True)
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidError(f"HUTCH_ENGINE={url!r}: a unix:// URL names an absolute path")
        return Endpoint(url=url, unix=path, local=Path(path) == paths.socket_path())
    if parts.scheme == "https":
        try:
            port = parts.port
        except ValueError:
            raise InvalidError(f"HUTCH_ENGINE={url!r}: the port is a number from 1 to "
                               "65535") from None
        return _https(url, parts.hostname, port, credentials)
    if parts.scheme == "ssh":
        from hutch.sdk import sshforward

        return Endpoint(url=url, unix=sshforward.local_socket(url), ssh=True,
                        ssh_options=tuple(ssh_options))
    raise InvalidError(f"HUTCH_ENGINE={url!r}: the engine's URL is unix://, https:// or "
                       "ssh:// (http:// is refused: the API carries files and secrets)")


def _https(url: str, host: str | None, port: int | None, credentials: str | None
           ) -> Endpoint:
    if not host or port is None:
        raise InvalidError(f"HUTCH_ENGINE={url!r}: an https:// engine URL names a host and "
                           "a port (https://HOST:PORT)")
    if not credentials:
        raise InvalidError(f"the engine at {url} needs its client credentials: set "
                           "HUTCH_ENGINE_CREDENTIALS to the directory `hutch engine "
                           "remote-credentials` wrote (or `hutch context create ... "
                           "--credentials DIR`)")
    bundle = contexts.check_bundle(Path(credentials).expanduser())
    token = (bundle / "token").read_text().strip()
    if not re.fullmatch(r"[A-Za-z0-9._~+/=-]{1,512}", token):
        raise InvalidError(f"{bundle / 'token'} does not hold a token")
    context = ssl.create_default_context(cafile=str(bundle / "ca.crt"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.hostname_checks_common_name = False  # the server's names are its SANs only
    context.load_cert_chain(bundle / "client.crt", bundle / "client.key")
    return Endpoint(url=url, host=host, port=port, tls=context, token=token)
