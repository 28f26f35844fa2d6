"""hutch.modal.aliasing and ``python -m hutch.modal``: ``import modal`` resolved to hutch,
only when asked, three ways."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import hutch
from hutch.modal import aliasing

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def as_modal() -> Iterator[None]:
    aliasing.install()
    try:
        yield
    finally:
        aliasing.uninstall()


def _python(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter of this environment, importing hutch from this checkout."""
    base = {k: v for k, v in os.environ.items() if k != aliasing.ENV}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60)


def test_modal_is_hutch_once_installed(as_modal: None) -> None:
    import modal
    import modal.exception
    from modal.container_process import ContainerProcess
    from modal.io_streams import StreamReader

    assert modal.Sandbox is hutch.Sandbox and modal.Image is hutch.Image
    assert modal.exception is hutch.exception
    assert ContainerProcess is hutch.ContainerProcess and StreamReader is hutch.StreamReader
    with pytest.raises(modal.exception.NotFoundError):
        raise hutch.exception.NotFoundError("caught under Modal's name")


def test_only_modals_own_module_names_are_served(as_modal: None) -> None:
    with pytest.raises(ModuleNotFoundError, match=r"modal\.runtime"):
        import modal.runtime  # (hutch's own module, not Modal's)
    with pytest.raises(ModuleNotFoundError):
        import modal.no_such_module  # noqa: F401


def test_uninstall_forgets_the_alias() -> None:
    aliasing.install()
    import modal

    assert modal.__name__ == "hutch.modal"
    aliasing.uninstall()
    assert "modal" not in sys.modules and not aliasing.installed()


def test_a_real_modal_is_untouched_without_the_opt_in(tmp_path: Path) -> None:
    real = tmp_path / "modal"
    real.mkdir()
    (real / "__init__.py").write_text("REAL = True\n")
    done = _python("-c", "import modal, hutch; hutch.Sandbox; print(modal.REAL)",
                   cwd=tmp_path)
    assert done.stdout.strip() == "True", done.stderr
    late = _python("-c", "import modal, hutch; hutch.install_as_modal()", cwd=tmp_path)
    assert "a real `modal` package is imported already" in late.stderr


def test_python_m_hutch_modal_runs_a_program_as_python_would(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("WHERE = 'beside the program'\n")
    program = tmp_path / "prog.py"
    program.write_text(textwrap.dedent("""
        import atexit, os, pickle, sys
        import modal
        from modal.exception import InternalError
        import helper
        print(__name__, sys.argv[1:], modal.Sandbox.__module__, helper.WHERE,
              os.environ["HUTCH_AS_MODAL"])

        class Job:
            pass

        # after the top level returns, as a thread or an atexit handler may
        atexit.register(lambda: print("pickled", len(pickle.dumps(Job())) > 0,
                                      os.path.isabs(__file__)))
    """))
    done = _python("-m", "hutch.modal", str(program), "a", "--b", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["__main__", "['a',", "'--b']", "hutch.sdk.sandbox",
                                   "beside", "the", "program", "1", "pickled", "True", "True"]
    module = _python("-m", "hutch.modal", "-m", "prog", "x", cwd=tmp_path)
    assert module.returncode == 0 and not module.stderr, module.stderr
    assert module.stdout.startswith("__main__ ['x']") and "pickled True True" in module.stdout
    missing = _python("-m", "hutch.modal", str(tmp_path / "nope.py"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such program" in missing.stderr


def test_hutch_as_modal_reaches_every_process_of_the_environment(tmp_path: Path) -> None:
    """The ``hutch-as-modal.pth`` hook in this environment's site-packages (a wheel carries
    it; tools/install-env.sh puts it beside an editable install)."""
    hook = Path(sysconfig.get_path("purelib")) / "hutch-as-modal.pth"
    assert hook.exists(), f"{hook} is missing: run tools/install-env.sh"
    check = "import modal; print(modal.Sandbox.__module__)"
    on = _python("-c", check, cwd=tmp_path, env={aliasing.ENV: "1"})
    assert on.stdout.strip() == "hutch.sdk.sandbox", on.stderr
    for value in ("0", "false", "off"):
        off = _python("-c", check, cwd=tmp_path, env={aliasing.ENV: value})
        assert "No module named 'modal'" in off.stderr, value


def test_a_wheel_carries_the_hook(tmp_path: Path) -> None:
    """Built as pip builds it for a user (setuptools and wheel from the package index),
    from a copy: a build leaves ``build/`` behind."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "hutch", source / "hutch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
                 "hutch-as-modal.pth"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
         str(source)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if built.returncode and "No matching distribution found for setuptools" in built.stderr:
        pytest.skip("the package index is unreachable: no setuptools to build with")
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("hutch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("hutch-as-modal.pth") == (ROOT / "hutch-as-modal.pth").read_bytes()
        assert "hutch/modal/aliasing.py" in archive.namelist()
