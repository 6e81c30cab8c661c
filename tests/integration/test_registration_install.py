"""A fresh virtual environment: `pip install .` or `pip install -e .` is the only step before anomalib finds us.

The environment is built the same way wherever pytest runs (system Python, a venv, CI): a venv of its own, with no
pip and no system site-packages, whose ``site-packages`` holds one ``.pth`` file listing the site-packages of the
interpreter running the tests. It therefore sees exactly the packages pytest sees (torch, anomalib, pip and the
build backend, nothing downloaded), but not their start-up hooks: ``.pth`` files are run only in the venv's own
site-packages, so the checkout's own installation (an editable hook, a ``PYTHONPATH``) is invisible and anomalib
finds our models only if the install under test put its hook there. ``pip install --no-build-isolation`` builds
with the running environment's setuptools (the ``dev`` extra installs the build requirements).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "packaging", "anomalib_multiclass")
# A fresh environment: no PYTHONPATH pointing at a checkout, no user site-packages added behind our back.
ENV = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONHOME"}}
ENV["PYTHONNOUSERSITE"] = "1"

# What the venv's interpreter reports after the install, in one start (no torch, no anomalib).
PROBE = """
import json, sys, sysconfig
import anomalib_multiclass._registration as registration
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "package": __import__("anomalib_multiclass").__file__,
    "hook": any(isinstance(finder, registration._Finder) for finder in sys.meta_path),
    "heavy": sorted(name for name in ("torch", "anomalib") if name in sys.modules),
}))
"""


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _run(venv: Path, args: list[str], cwd: Path) -> str:
    # cwd outside the repository: the checkout must not be importable by accident.
    result = subprocess.run([str(_python(venv)), *args], capture_output=True, text=True, cwd=cwd, env=ENV, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout.strip()


def running_site_packages() -> list[str]:
    """The site-packages directories of the interpreter running pytest (a venv's, or the system's)."""
    directories = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(directories) if Path(d).is_dir()]


def make_venv(path: Path, cwd: Path) -> Path:
    """A venv without pip or system site-packages that sees the running interpreter's packages; its purelib."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, env=ENV)
    purelib = Path(_run(path, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd))
    (purelib / "_running_environment.pth").write_text("\n".join(running_site_packages()) + "\n")
    return purelib


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of what the package is built from (building in place would write into the checkout)."""
    root = tmp_path_factory.mktemp("src") / "anomalib-multiclass"
    root.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(source, root / name)
    return root


def install(source: Path, tmp_path: Path, editable: bool) -> tuple[Path, Path]:
    """A fresh venv with the package installed by pip alone; returns (venv, its site-packages)."""
    venv = tmp_path / "venv"
    purelib = make_venv(venv, tmp_path)
    command = ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    command += ["--disable-pip-version-check", *(["-e", str(source)] if editable else [str(source)])]
    _run(venv, command, tmp_path)
    return venv, purelib


@pytest.fixture(scope="module")
def installed(source_copy, tmp_path_factory):
    """``installed(editable)``: (venv, site-packages, a working directory), built once per kind in this module."""
    venvs: dict[bool, tuple[Path, Path, Path]] = {}

    def get(editable: bool) -> tuple[Path, Path, Path]:
        if editable not in venvs:
            workdir = tmp_path_factory.mktemp("editable" if editable else "install")
            venvs[editable] = (*install(source_copy, workdir, editable), workdir)
        return venvs[editable]

    return get


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_puts_the_registration_hook_in_a_fresh_venv(installed, source_copy, editable):
    venv, purelib, workdir = installed(editable)
    assert (purelib / "anomalib_multiclass.pth").is_file(), (
        f"no start-up hook in {purelib}: {sorted(purelib.iterdir())}"
    )
    probe = json.loads(_run(venv, ["-c", PROBE], workdir))
    assert Path(probe["purelib"]) == purelib
    # the venv's own copy is imported (the checkout's installation is not visible), the hook ran at start-up,
    # and start-up stays free of torch and anomalib
    expected = source_copy if editable else purelib
    assert Path(probe["package"]).resolve().is_relative_to(expected.resolve()), probe["package"]
    assert probe["hook"], "anomalib_multiclass.pth did not install the import hook at start-up"
    assert probe["heavy"] == []


def test_the_fresh_venv_sees_the_running_packages_but_not_their_start_up_hooks(tmp_path):
    venv = tmp_path / "venv"
    make_venv(venv, tmp_path)
    code = (
        "import json, sys, pytest\n"
        "hooks = [repr(f) for f in sys.meta_path if 'anomalib_multiclass' in repr(f)]\n"
        "print(json.dumps({'pytest': pytest.__file__, 'hooks': hooks}))"
    )
    out = json.loads(_run(venv, ["-c", code], tmp_path))
    assert Path(out["pytest"]).resolve() == Path(pytest.__file__).resolve()  # the packages pytest runs with
    assert out["hooks"] == []  # but no start-up hook (ours, an editable finder) from the running environment


# Importing anomalib takes ~10 s on 2 cores: `pip install .` (what users run) is checked in the default suite,
# the editable install (whose start-up hook the test above checks) with the slow tests.
@pytest.mark.parametrize(
    "editable", [pytest.param(False, id="install"), pytest.param(True, id="editable", marks=pytest.mark.slow)]
)
def test_anomalib_finds_the_models_by_short_name_after_pip_install(installed, editable):
    venv, _, workdir = installed(editable)
    code = (
        "from anomalib.models import get_model\n"
        "a = get_model('uniad', pre_trained=False, backbone='tf_efficientnet_lite0', input_size=(64, 64),"
        " neighbor_size=3)\n"
        "b = get_model({'class_path': 'UniAD', 'init_args': "
        "{'pre_trained': False, 'backbone': 'tf_efficientnet_lite0', 'input_size': [64, 64], 'neighbor_size': 3}})\n"
        "print(type(a).__module__.split('.')[0], type(b).__name__)"
    )
    assert _run(venv, ["-c", code], workdir) == "anomalib_multiclass UniAD"
