"""The remote engine's credentials: a CA of its own, a server certificate for the names
clients reach it by, and per client a certificate and a token (``hutch engine
remote-credentials``).

Why both a certificate and a token: the TLS handshake refuses whoever has no certificate
of this CA before a byte of HTTP is read, and the token (checked on each connection's
first request, with the certificate's name) can be revoked alone by deleting one file,
with no certificate revocation list to distribute: new connections are refused at once,
open ones end within seconds (:mod:`.gateway`).  Only the token's SHA-256 is kept on the
server: a copy of the server's directory lets nobody in.

Made with the ``openssl`` command, as the tunnels' CA is
(:mod:`hutch.engine.network.tlsproxy`), but a separate CA: that one is trusted inside
sandboxes and limited to 127.0.0.1, this one must sign for the server's own names and is
trusted only by the SDK of whoever holds a client bundle.  Everything is written 0600 in
0700 directories: a bundle is the engine user's account, to whoever holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import subprocess
from pathlib import Path

from hutch.engine.errors import EngineError, Invalid

#: A client's name: a file name and a certificate's CN.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]"
                   r"{0,61}[A-Za-z0-9])?)*\Z")
#: What a client bundle holds: the CA to verify the server by, its own certificate and
#: key, and its token.
BUNDLE_FILES = ("ca.crt", "client.crt", "client.key", "token")
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
#: What a server's or client's certificate says besides its purpose: no CA, a signing key.
LEAF = ["-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature"]


class CredentialError(EngineError):
    """openssl failed, or the credentials are not there."""


def remote_dir(data_dir: Path) -> Path:
    return data_dir / "remote"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise Invalid(f"a client's name is letters, digits, '.', '_' and '-' (at most "
                             f"63), got {name!r}")
    return name


def check_host(host: str) -> str:
    """A name or an address the server certificate vouches for (it goes into openssl's
    configuration syntax: letters, digits, '.', ':' and '-' only, so nothing in it can
    end a value or start another; no IPv6 scope, which a certificate cannot name)."""
    if not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", host):
        raise Invalid(f"{host!r} is neither an IP address nor a host name")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not _HOST.match(host):
        raise Invalid(f"{host!r} is neither an IP address nor a host name")
    return host.lower()


def _openssl(where: Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=where, capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise CredentialError(f"openssl {args[0]} failed: {result.stderr.strip()[-500:]}")


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def ensure_server(data_dir: Path, hosts: list[str]) -> Path:
    """The CA (made once) and a server certificate for ``hosts`` plus 127.0.0.1 and
    localhost (made again when the names change); returns the directory."""
    where = _private_dir(remote_dir(data_dir))
    old_umask = os.umask(0o077)
    try:
        if not (where / "ca.crt").exists():
            _openssl(where, "req", "-x509", *EC_KEY, "-days", "3650", "-subj",
                     "/CN=hutch remote engine CA", "-addext",
                     "basicConstraints=critical,CA:TRUE,pathlen:0",
                     "-keyout", "ca.key", "-out", "ca.crt")
        names = sorted({"127.0.0.1", "localhost", *(check_host(h) for h in hosts)})
        listed = "\n".join(names) + "\n"
        hosts_file = where / "server.hosts"
        if (where / "server.crt").exists() and hosts_file.exists() \
                and hosts_file.read_text() == listed:
            return where
        sans = ",".join(("IP:" if _is_ip(n) else "DNS:") + n for n in names)
        _openssl(where, "req", "-new", *EC_KEY, "-subj", f"/CN={names[0]}",
                 "-keyout", "server.key", "-out", "server.csr",
                 "-addext", f"subjectAltName={sans}", *LEAF,
                 "-addext", "extendedKeyUsage=serverAuth")
        _openssl(where, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey",
                 "ca.key", "-CAcreateserial", "-days", "825", "-copy_extensions", "copy",
                 "-out", "server.crt.tmp")
        (where / "server.crt.tmp").rename(where / "server.crt")
        hosts_file.write_text(listed)
        return where
    finally:
        os.umask(old_umask)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def issue_client(data_dir: Path, name: str, out: Path) -> Path:
    """A client bundle in ``out`` (a new directory, or an empty one): a certificate of
    the CA for ``name``, its key and a new token, whose hash the server keeps.  Issuing
    a name again replaces its token: the old bundle stops working."""
    check_name(name)
    where = remote_dir(data_dir)
    if not (where / "ca.key").exists():
        raise CredentialError("no remote CA yet: run `hutch engine remote-credentials`")
    if out.exists() and any(out.iterdir()):
        raise Invalid(f"{out} is not empty: a bundle goes in a new directory")
    _private_dir(out)
    old_umask = os.umask(0o077)
    try:
        _openssl(out, "req", "-new", *EC_KEY, "-subj", f"/CN={name}",
                 "-keyout", "client.key", "-out", "client.csr", *LEAF,
                 "-addext", "extendedKeyUsage=clientAuth")
        _openssl(out, "x509", "-req", "-in", "client.csr", "-CA", str(where / "ca.crt"),
                 "-CAkey", str(where / "ca.key"), "-CAserial", str(where / "ca.srl"),
                 "-CAcreateserial", "-days", "825", "-copy_extensions", "copy",
                 "-out", "client.crt")
        (out / "client.csr").unlink()
        (out / "ca.crt").write_bytes((where / "ca.crt").read_bytes())
        token = "hutch_" + secrets.token_urlsafe(32)
        (out / "token").write_text(token + "\n")
        clients = _private_dir(where / "clients")
        staged = clients / f".{name}.tmp"
        staged.write_text(digest(token) + "\n")
        os.replace(staged, clients / f"{name}.sha256")
    finally:
        os.umask(old_umask)
    return out


def revoke(data_dir: Path, name: str) -> bool:
    """Forget ``name``'s token: its bundle is refused from its next connection on."""
    check_name(name)
    path = remote_dir(data_dir) / "clients" / f"{name}.sha256"
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def clients(data_dir: Path) -> list[str]:
    folder = remote_dir(data_dir) / "clients"
    return sorted(p.name.removesuffix(".sha256") for p in folder.glob("*.sha256")) \
        if folder.is_dir() else []


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def stored(data_dir: Path) -> dict[str, str]:
    """Every client's token hash, to its name, read from disk now (a revocation counts
    from the next read).  A file that cannot be read raises: a client must not be told
    its token is wrong because the server ran out of descriptors."""
    folder = remote_dir(data_dir) / "clients"
    found = {}
    for path in sorted(folder.glob("*.sha256")) if folder.is_dir() else []:
        try:
            found[path.read_text().strip()] = path.name.removesuffix(".sha256")
        except FileNotFoundError:
            continue  # (revoked meanwhile)
    return found


def owner(kept: dict[str, str], token: str) -> str | None:
    """The client of ``kept`` (:func:`stored`) whose token this is, or None.  Every
    stored hash is compared, in constant time."""
    given = digest(token)
    found = None
    for hashed, name in kept.items():
        if hmac.compare_digest(hashed, given):
            found = name
    return found


def client_of(data_dir: Path, token: str) -> str | None:
    """:func:`owner` among the tokens stored now."""
    return owner(stored(data_dir), token)
