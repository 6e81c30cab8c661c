"""Ships ``anomalib_multiclass.pth`` at the root of site-packages (the registration hook, see ``_registration.py``).

Everything else is declared in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "anomalib_multiclass.pth"


class BuildPyWithPth(build_py):
    """``build_py`` that also places the start-up ``.pth`` file next to the package."""

    def run(self) -> None:
        """Build the package, then copy the ``.pth`` file to the build root."""
        super().run()
        self.copy_file(str(Path(__file__).parent / "packaging" / PTH), str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """List the ``.pth`` file among the build outputs so the wheel records it."""
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class EditableWheelWithPth(editable_wheel):
    """``pip install -e .``: the editable wheel carries the same ``.pth`` file at its root."""

    def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copyfile(Path(__file__).parent / "packaging" / PTH, Path(installation_dir) / PTH)


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
