"""setuptools' build, plus ``hutch-as-modal.pth`` at the root of the installed packages.

Python runs a ``.pth`` file's ``import`` lines at every start; this one installs hutch as
``modal`` only when ``HUTCH_AS_MODAL`` is set (``hutch.modal.aliasing``), so that a
framework's own ``import modal`` resolves to hutch without a change to its code.  An
editable install does not carry it: ``tools/install-env.sh`` copies it there.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK = "hutch-as-modal.pth"


class BuildWithModalHook(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(HOOK, str(Path(self.build_lib) / HOOK))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / HOOK)]


setup(cmdclass={"build_py": BuildWithModalHook})
