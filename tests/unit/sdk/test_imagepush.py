"""hutch.sdk.imagepush: what ``push_image`` sends (the engine's own model takes it), and
what it refuses before sending, without echoing credentials."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hutch.api import urls
from hutch.api.imagemodels import PushImageRequest
from hutch.exception import InvalidError
from hutch.sdk.imagepush import push_image
from tests.unit.sdk.offline import RequestSent, check, offline_sdk  # noqa: F401 - autouse


@pytest.mark.parametrize(("credentials", "body"), [
    (None, {"ref": "hutch/step:x", "dest": "127.0.0.1:5000/n:1"}),
    ("robot:p:w d", {"ref": "hutch/step:x", "dest": "127.0.0.1:5000/n:1",
                     "credentials": "robot:p:w d"}),
    ("robot:", {"ref": "hutch/step:x", "dest": "127.0.0.1:5000/n:1",
                "credentials": "robot:"}),
])
def test_a_push_sends_what_the_engine_takes(credentials: str | None,
                                            body: dict[str, Any]) -> None:
    with pytest.raises(RequestSent) as sent:
        push_image("hutch/step:x", "127.0.0.1:5000/n:1", credentials)
    assert (sent.value.method, sent.value.path, sent.value.body) == ("POST", urls.IMAGES_PUSH,
                                                                     body)
    check("push_image", PushImageRequest, sent.value.body)


@pytest.mark.parametrize("credentials", ["no-colon-secret", ":secret", "user:sec\0ret", 42])
def test_malformed_credentials_are_refused_without_being_echoed(credentials: Any) -> None:
    with pytest.raises(InvalidError) as refused:
        push_image("hutch/step:x", "127.0.0.1:5000/n:1", credentials)
    assert "secret" not in str(refused.value).replace("push_image's credentials", "")


@pytest.mark.parametrize(("ref", "dest"), [("", "h/n:1"), ("r", ""), (None, "h/n:1"),
                                           ("r", "h/n\udcff:1")])
def test_a_ref_and_a_destination_are_needed(ref: Any, dest: Any) -> None:
    with pytest.raises(InvalidError):
        push_image(ref, dest)


def test_the_engine_model_refuses_credentials_without_a_user() -> None:
    for bad in (":pw", "nocolon", "u:p\nw", "u:p\0w"):
        with pytest.raises(ValidationError):
            PushImageRequest(ref="r", dest="h/n:1", credentials=bad)
