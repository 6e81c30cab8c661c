"""A fresh virtual environment: `pip install .` or `pip install -e .` is the only step before anomalib finds us.

The venv sees the system's torch/anomalib (``--system-site-packages``) so nothing is downloaded; it has no pip
of its own (``--without-pip``) so the build runs with the system's setuptools (a venv's bundled setuptools may
be older than the ``setuptools>=68`` this project requires, and ``--no-build-isolation`` would then fail).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "packaging", "anomalib_multiclass")
# A fresh environment: no PYTHONPATH pointing at a checkout.
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _run(venv: Path, code: str, cwd: Path) -> str:
    # cwd outside the repository: the checkout must not be importable by accident.
    result = subprocess.run(
        [str(_python(venv)), "-c", code], capture_output=True, text=True, cwd=cwd, env=ENV, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of what the package is built from (building in place would write into the checkout)."""
    root = tmp_path_factory.mktemp("src") / "anomalib-multiclass"
    root.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, root / name)
    return root


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_fresh_venv_install_registers_with_no_other_step(source_copy, tmp_path, editable):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    install = [str(_python(venv)), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q"]
    install += ["-e", str(source_copy)] if editable else [str(source_copy)]
    result = subprocess.run(install, capture_output=True, text=True, env=ENV, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    site = Path(_run(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])", tmp_path))
    assert (site / "anomalib_multiclass.pth").is_file(), f"no start-up hook in {site}: {sorted(site.iterdir())}"

    # The venv's own copy is the one imported, and start-up stays free of torch/anomalib.
    where = _run(venv, "import anomalib_multiclass; print(anomalib_multiclass.__file__)", tmp_path)
    expected = source_copy if editable else site
    assert Path(where).resolve().is_relative_to(expected.resolve()), where
    assert _run(venv, "import sys; import json; print('torch' in sys.modules)", tmp_path) == "False"

    out = _run(
        venv,
        "from anomalib.models import get_model\n"
        "a = get_model('uniad', pre_trained=False, backbone='tf_efficientnet_lite0', input_size=(64, 64))\n"
        "b = get_model({'class_path': 'anomalib_multiclass.models.UniAD', 'init_args': "
        "{'pre_trained': False, 'backbone': 'tf_efficientnet_lite0', 'input_size': [64, 64]}})\n"
        "print(type(a).__module__.split('.')[0], type(b).__name__)",
        tmp_path,
    )
    assert out == "anomalib_multiclass UniAD"
