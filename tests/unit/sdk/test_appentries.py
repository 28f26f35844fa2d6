"""hutch.sdk.appentries through ``App``: local entrypoints kept to be run, Modal Functions
kept but refused where they would run remotely, classes and deploys refused."""

from __future__ import annotations

import pytest

from hutch import App
from hutch.exception import InvalidError


def test_a_local_entrypoint_is_registered_and_callable() -> None:
    app = App("entries")

    @app.local_entrypoint()
    def main(n: int = 1) -> int:
        return n * 2

    assert app.registered_entrypoints == {"test_a_local_entrypoint_is_registered_and_callable"
                                          ".<locals>.main": main}
    assert main(n=21) == 42
    with pytest.raises(InvalidError, match="parentheses"):
        app.local_entrypoint(lambda: None)


def test_a_function_runs_locally_and_refuses_remotely() -> None:
    app = App("functions")

    @app.function(image=None, gpu="A100", timeout=60)
    def square(x: int) -> int:
        return x * x

    assert square.local(7) == 49 and square(3) == 9
    for call in (square.remote, square.spawn, square.map):
        with pytest.raises(InvalidError, match=r"\.(remote|spawn|map)\(\): hutch runs "
                                                "sandboxes, not Modal Functions"):
            call(2)
    assert list(app.registered_functions.values()) == [square]


def test_classes_servers_and_deploys_are_refused_by_name() -> None:
    app = App("refused")
    with pytest.raises(InvalidError, match=r"App\.cls"):
        app.cls(gpu="T4")
    with pytest.raises(InvalidError, match=r"App\.server"):
        app.server()
    with pytest.raises(InvalidError, match=r"App\.deploy"):
        app.deploy()


def test_include_takes_the_other_apps_declarations() -> None:
    tools, main_app = App("tools", tags={"team": "a"}), App("main")

    @tools.local_entrypoint(name="go")
    def go() -> None:
        pass

    assert main_app.include(tools) is main_app
    assert main_app.registered_entrypoints == {"go": go} and main_app.tags == {"team": "a"}
