"""Logging in to registries for skopeo, and Amazon ECR's token exchange.

Credentials reach skopeo in an auth file of the pull's or push's own
(containers-auth.json(5), mode 0600, removed after), never on its command line, which every
user of the host can read; messages that might quote them are scrubbed.

Amazon ECR takes no long-lived password: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
are exchanged for a 12-hour registry token with ECR's ``GetAuthorizationToken``, a request
signed with AWS Signature Version 4 (:func:`sigv4_headers`, checked against AWS's published
example), whose answer is ``AWS:<token>`` in base64.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from pathlib import Path


class RegistryLoginFailed(RuntimeError):
    pass


def registry_host(dest: str) -> str:
    """The registry a reference (without ``docker://``) names, as auth files key it: its
    first component where that is a host (a dot, a port, ``localhost``, an IPv6 address or
    capitals, as Docker reads it), else Docker Hub (``docker.io``)."""
    first, slash, _ = dest.partition("/")
    if slash and (any(c in first for c in ".:[") or first == "localhost"
                  or first != first.lower()):
        return "docker.io" if first == "index.docker.io" else first
    return "docker.io"


def write_auth_file(path: Path, dest: str, credentials: str) -> None:
    """A containers-auth.json(5) file at ``path`` (mode 0600, new) that logs in to the
    registry of ``dest`` with ``credentials`` (``user:password``)."""
    doc = {"auths": {registry_host(dest): {"auth": base64.b64encode(
        credentials.encode()).decode()}}}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)


def scrub(text: str, credentials: str | None) -> str:
    """``text`` with the credentials (as they are and as an auth file holds them), and
    their password on its own, blotted out."""
    if not credentials:
        return text
    password = credentials.partition(":")[2]
    for secret in (credentials, base64.b64encode(credentials.encode()).decode(), password):
        if secret:
            text = text.replace(secret, "***")
    return text


def sigv4_headers(*, method: str, host: str, path: str, region: str, service: str,
                  headers: dict[str, str], body: bytes, key_id: str, secret: str,
                  now: datetime.datetime, query: str = "") -> dict[str, str]:
    """``headers`` plus ``X-Amz-Date`` and the ``Authorization`` of AWS Signature V4."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    signed = {k.lower(): " ".join(v.split()) for k, v in
              {**headers, "host": host, "x-amz-date": stamp}.items()}
    names = ";".join(sorted(signed))
    canonical = "\n".join([method, path, query, *(f"{k}:{signed[k]}" for k in sorted(signed)), "",
                           names, hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {**headers, "X-Amz-Date": stamp, "Authorization":
            f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={names}, "
            f"Signature={signature}"}


def ecr_login(credentials: str, endpoint: str | None = None) -> str:
    """``AWS:<token>`` for ``credentials`` (``key_id:secret:region``), from ECR's
    ``GetAuthorizationToken`` (``endpoint``: another address for it, for tests)."""
    key_id, secret, region = [*credentials.split(":", 2), "", ""][:3]
    if not (key_id and secret and region):
        raise RegistryLoginFailed("Amazon ECR needs AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                                  "and AWS_REGION")
    host = f"api.ecr.{region}.amazonaws.com"
    body = b"{}"
    headers = sigv4_headers(
        method="POST", host=host, path="/", region=region, service="ecr", body=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target":
                 "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"},
        key_id=key_id, secret=secret, now=datetime.datetime.now(datetime.UTC))
    request = urllib.request.Request(endpoint or f"https://{host}/", data=body,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read(1 << 20))
        token = answer["authorizationData"][0]["authorizationToken"]
        login = base64.b64decode(token).decode()
    except urllib.error.HTTPError as exc:
        raise RegistryLoginFailed(f"Amazon ECR refused the login ({exc.code}): "
                                  f"{scrub(exc.read(4096).decode(errors='replace'), secret)}"
                                  ) from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise RegistryLoginFailed(f"Amazon ECR's token could not be had: "
                                  f"{scrub(str(exc), secret)}") from None
    if not login.startswith("AWS:"):
        raise RegistryLoginFailed("Amazon ECR answered with a token of an unknown form")
    return login
