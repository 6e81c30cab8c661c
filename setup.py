"""Ships ``anomalib_multiclass.pth`` at the root of site-packages (the registration hook, see ``_registration.py``).

Everything else is declared in ``pyproject.toml``. Both paths use public interfaces only: ``build_py``'s outputs for
``pip install .``, and the wheel format itself (PEP 427: a file plus its ``RECORD`` line) for ``pip install -e .``,
so no setuptools internals are involved.
"""

import base64
import hashlib
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "anomalib_multiclass.pth"
PTH_SOURCE = Path(__file__).parent / "packaging" / PTH


class BuildPyWithPth(build_py):
    """``build_py`` that also places the start-up ``.pth`` file next to the package."""

    def run(self) -> None:
        """Build the package, then copy the ``.pth`` file to the build root."""
        super().run()
        self.copy_file(str(PTH_SOURCE), str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """List the ``.pth`` file among the build outputs so the wheel records it."""
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


def add_to_wheel(wheel: Path, name: str, data: bytes) -> None:
    """Add a file at the root of a built wheel, with its ``RECORD`` line (PEP 427/376)."""
    with zipfile.ZipFile(wheel) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    if any(info.filename == name for info, _ in entries):
        return
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info, content in entries:
            if info.filename.endswith(".dist-info/RECORD"):
                content = content.rstrip(b"\n") + f"\n{name},sha256={digest},{len(data)}\n".encode()
                record = (info, content)
                continue
            archive.writestr(info, content)
        archive.writestr(name, data)
        archive.writestr(*record)


class EditableWheelWithPth(editable_wheel):
    """``pip install -e .``: the editable wheel carries the same ``.pth`` file at its root."""

    def run(self) -> None:
        """Build the editable wheel, then add the ``.pth`` file to it."""
        super().run()
        wheels = sorted(Path(self.dist_dir).glob("anomalib_multiclass-*.whl"), key=lambda path: path.stat().st_mtime)
        if not wheels:
            msg = f"No editable wheel of anomalib_multiclass in {self.dist_dir} to add {PTH} to."
            raise FileNotFoundError(msg)
        add_to_wheel(wheels[-1], PTH, PTH_SOURCE.read_bytes())


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
