"""hutch.exception: the error tree with Modal's names."""

from __future__ import annotations

import builtins
import inspect

import pytest

from hutch import exception


def test_all_lists_exactly_the_exception_classes() -> None:
    defined = {
        name for name, obj in vars(exception).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
        and obj.__module__ == exception.__name__
    }
    assert set(exception.__all__) == defined
    assert len(exception.__all__) == len(set(exception.__all__))


#: Modal's names that, as in Modal, are not errors: warnings, a BaseException, and an
#: Exception outside the tree.
NOT_ERRORS = {"DeprecationError", "ServerWarning", "AsyncUsageWarning", "InternalAPIWarning",
              "InputCancellation", "ModuleNotMountable"}


@pytest.mark.parametrize("name", sorted(NOT_ERRORS))
def test_modals_names_outside_the_tree_are_what_they_are_in_modal(name: str) -> None:
    cls = getattr(exception, name)
    assert not issubclass(cls, exception.Error)
    base = {"InputCancellation": BaseException, "ModuleNotMountable": Exception}
    assert issubclass(cls, base.get(name, UserWarning))


@pytest.mark.parametrize("name", sorted(set(exception.__all__) - NOT_ERRORS))
def test_every_class_is_a_hutch_error(name: str) -> None:
    cls = getattr(exception, name)
    assert inspect.isclass(cls)
    assert issubclass(cls, exception.Error)
    assert issubclass(cls, Exception)
    err = cls("boom")
    assert str(err) == "boom"
    with pytest.raises(exception.Error):
        raise err


@pytest.mark.parametrize("name", ["SandboxTimeoutError", "ExecTimeoutError", "TimeoutError"])
def test_timeouts_are_builtin_timeouts(name: str) -> None:
    cls = getattr(exception, name)
    assert issubclass(cls, builtins.TimeoutError)
    assert issubclass(cls, exception.TimeoutError)
    with pytest.raises(builtins.TimeoutError):
        raise cls("late")
    assert exception.TimeoutError is not builtins.TimeoutError


def test_hierarchy() -> None:
    assert issubclass(exception.ImageBuildError, exception.ExecutionError)
    for name in ("InvalidError", "NotFoundError", "AlreadyExistsError", "ConflictError",
                 "EngineError", "SandboxTerminatedError", "ExecutionError"):
        cls = getattr(exception, name)
        assert not issubclass(cls, builtins.TimeoutError), name
    # siblings are distinct: catching one does not catch another
    assert not issubclass(exception.NotFoundError, exception.InvalidError)
    assert not issubclass(exception.SandboxTerminatedError, exception.TimeoutError)
    assert not issubclass(exception.Error, builtins.TimeoutError)


def test_reexported_from_package() -> None:
    import hutch

    assert hutch.exception is exception


def test_modals_preemption_helper_refuses() -> None:
    with pytest.raises(exception.InvalidError, match="simulate_preemption"):
        exception.simulate_preemption(1)
