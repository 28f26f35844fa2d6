"""AWS Signature V4 against AWS's own published example, and the ECR token exchange
against a local HTTP server answering as ECR does."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hutch.imagebuild import registryauth
from hutch.imagebuild.registryauth import RegistryLoginFailed


def test_sigv4_matches_awss_published_example() -> None:
    """The IAM ``ListUsers`` example of AWS's "Signature Version 4 signing process"."""
    headers = registryauth.sigv4_headers(
        method="GET", host="iam.amazonaws.com", path="/",
        query="Action=ListUsers&Version=2010-05-08", region="us-east-1", service="iam",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        body=b"", key_id="AKIDEXAMPLE", secret="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        now=datetime.datetime(2015, 8, 30, 12, 36, tzinfo=datetime.UTC))
    assert headers["X-Amz-Date"] == "20150830T123600Z"
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")


@pytest.fixture
def ecr() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"headers": dict(self.headers), "body": body})
            if "bad" in self.headers["Authorization"]:
                self.send_response(400)
                self.end_headers()
                self.wfile.write(b'{"message": "UnrecognizedClientException"}')
                return
            token = base64.b64encode(b"AWS:tok3n").decode()
            answer = {"authorizationData": [{"authorizationToken": token}]}
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(answer).encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    server.shutdown()
    server.server_close()


def test_ecr_login_signs_get_authorization_token(ecr: tuple[str, list[dict[str, Any]]]
                                                 ) -> None:
    endpoint, seen = ecr
    assert registryauth.ecr_login("AKID:s3cret/key:eu-west-1", endpoint) == "AWS:tok3n"
    headers = seen[0]["headers"]
    assert headers["X-Amz-Target"] == \
        "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")
    assert "/eu-west-1/ecr/aws4_request" in headers["Authorization"]
    assert "s3cret" not in json.dumps(headers)


def test_ecr_login_errors_name_the_cause_not_the_secret(
        ecr: tuple[str, list[dict[str, Any]]]) -> None:
    endpoint, _ = ecr
    with pytest.raises(RegistryLoginFailed, match="needs AWS_ACCESS_KEY_ID"):
        registryauth.ecr_login("only-a-key", endpoint)
    with pytest.raises(RegistryLoginFailed, match="refused the login \\(400\\)") as info:
        registryauth.ecr_login("bad:s3cret:us-east-1", endpoint.replace("/", "/", 1))
    assert "s3cret" not in str(info.value)
