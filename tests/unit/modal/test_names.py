"""hutch.modal's names (hutch/modal/names.py): each of Modal's names resolves, to hutch's
object where hutch does the thing, else to a placeholder that refuses with InvalidError."""

from __future__ import annotations

import pytest

import hutch
import hutch.modal as modal
from hutch.exception import InvalidError
from hutch.modal.names import SUBMODULES, TOP


@pytest.mark.parametrize("name", sorted(TOP))
def test_every_top_level_name_resolves(name: str) -> None:
    assert getattr(modal, name) is getattr(modal, name)  # (made once, then kept)
    assert name in dir(modal)


@pytest.mark.parametrize(("module", "name"), sorted(
    (module, name) for module, names in SUBMODULES.items() for name in names))
def test_every_submodule_name_resolves(module: str, name: str) -> None:
    assert getattr(modal.submodule(module), name) is not None
    assert name in dir(modal.submodule(module))


def test_what_hutch_does_is_hutchs_own() -> None:
    assert modal.Sandbox is hutch.Sandbox and modal.Volume is hutch.Volume
    assert modal.submodule("sandbox").Sandbox is hutch.Sandbox
    assert modal.submodule("exception") is hutch.exception
    assert modal.submodule("app") is modal.app  # type: ignore[attr-defined]
    assert modal.submodule("functions").Function is modal.Function  # as in Modal


@pytest.mark.parametrize(("use", "named"), [
    (lambda: modal.Function.from_name("app", "f"), "modal.Function.from_name"),
    (lambda: modal.Dict(), "modal.Dict"),
    (lambda: modal.method(), "modal.method"),
    (lambda: modal.Cls.from_name("app", "C"), "modal.Cls.from_name"),
    (lambda: modal.submodule("dict").Dict.from_name("d"), "modal.Dict.from_name"),
    (lambda: modal.SandboxSnapshot.from_id("x"), "modal.SandboxSnapshot.from_id"),
])
def test_what_hutch_does_not_do_refuses_by_name(use: object, named: str) -> None:
    with pytest.raises(InvalidError, match=named.replace(".", r"\.")) as refused:
        use()  # type: ignore[operator]
    assert "not supported by hutch" in str(refused.value)


def test_a_placeholder_can_still_be_named() -> None:
    assert not isinstance(object(), modal.Function)
    assert modal.Function.__name__ == "Function"
    with pytest.raises(AttributeError):
        modal.Function.__wrapped__  # noqa: B018 - dunders stay AttributeError (copy, pickle)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        modal.Nothing  # noqa: B018
    with pytest.raises(AttributeError):
        modal.submodule("sandbox").Nothing  # noqa: B018


def test_where_it_runs_and_its_config() -> None:
    assert modal.is_local() is True and modal.current_input_id() is None
    config = modal.submodule("config")
    assert config._profile == "hutch" and config.config_profiles() == ["hutch"]
    assert config.config.get("no_such_setting_here") is None


def test_placeholders_survive_probes_and_pickle() -> None:
    """hasattr, inspect, mock and pickle look at underscore names: they see none."""
    import inspect
    import pickle
    from unittest import mock

    assert not hasattr(modal.Dict, "_is_protocol") and not hasattr(modal.Dict, "_x")
    inspect.signature(modal.Dict)
    with mock.patch.object(modal, "Dict"):
        pass
    assert pickle.loads(pickle.dumps(modal.asgi_app)) is modal.asgi_app
