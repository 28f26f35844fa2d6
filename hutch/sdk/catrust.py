"""The engine's CA, trusted by the program that asked for a sandbox's encrypted tunnels, so
that ``urllib.request.urlopen(tunnel.url)``, ``requests.get`` and ``httpx`` verify it
without configuration, as they verify Modal's public certificates.

Why environment variables: each of those clients builds its trust store when it connects,
OpenSSL's default from ``SSL_CERT_FILE`` and requests' from ``REQUESTS_CA_BUNDLE``, so a
bundle of the CAs this process already trusted plus the engine's, named by both, reaches
every later connection and the processes this one starts.  Nothing else is trusted less:
the bundle is a superset.  ``HUTCH_TRUST_CA=0`` leaves the process alone; ``hutch engine
ca`` prints the certificate for trusting it elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path

from hutch.api import paths

#: Set to 0 to keep the engine's CA out of this process's trust.
ENV = "HUTCH_TRUST_CA"

_trusted: set[str] = set()


def _base_bundle() -> str:
    """The CAs this process trusts now, as PEM."""
    candidates = [os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile,
                  ssl.get_default_verify_paths().openssl_cafile]
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            with open(candidate) as f:
                return f.read()
    return ""


def trust(pem: str) -> Path | None:
    """Make this process (and what it starts) trust ``pem`` as well as what it trusted;
    the bundle's path, or None when ``HUTCH_TRUST_CA=0``."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    current = os.environ.get("SSL_CERT_FILE")
    if digest in _trusted and current and os.path.isfile(current):
        return Path(current)  # (this process made it: it holds the CA already)
    base = _base_bundle()
    content = base + ("\n" if base and not base.endswith("\n") else "") + pem
    folder = paths.runtime_dir() / "tls"
    # named by its content: every process that trusts the same CAs shares one file
    bundle = folder / f"ca-bundle-{hashlib.sha256(content.encode()).hexdigest()[:16]}.pem"
    if not bundle.is_file():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = folder / f".{bundle.name}.{os.getpid()}.part"
        partial.write_text(content)
        partial.replace(bundle)
    os.environ["SSL_CERT_FILE"] = str(bundle)
    if "REQUESTS_CA_BUNDLE" not in os.environ or digest in _trusted:
        os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    _trusted.add(digest)
    return bundle
