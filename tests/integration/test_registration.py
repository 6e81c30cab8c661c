"""After `pip install`, anomalib finds our models and datamodules by name; unrelated programs stay light."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_the_startup_hook_is_installed():
    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / "anomalib_multiclass.pth").exists(), "pip install -e . (or .) installs anomalib_multiclass.pth"


def test_unrelated_programs_do_not_import_torch_or_anomalib():
    assert _run("import sys, json; print('torch' in sys.modules, 'anomalib' in sys.modules)") == "False False"


def test_get_model_by_short_name_and_by_class_path():
    out = _run(
        "from anomalib.models import get_model, list_models\n"
        "a = get_model('uniad', pre_trained=False, backbone='tf_efficientnet_lite0', input_size=(64, 64),"
        " neighbor_size=3)\n"
        "b = get_model({'class_path': 'anomalib_multiclass.models.UniAD', 'init_args': "
        "{'pre_trained': False, 'backbone': 'tf_efficientnet_lite0', 'input_size': [64, 64], 'neighbor_size': 3}})\n"
        "c = get_model({'class_path': 'UniAD', 'init_args': {'pre_trained': False, 'input_size': [64, 64],"
        " 'neighbor_size': 3}})\n"
        "print(type(a).__name__, type(b).__name__, type(c).__name__, 'uni_a_d' in list_models())"
    )
    assert out == "UniAD UniAD UniAD True"


@pytest.mark.slow
def test_datamodules_are_found_by_short_name_through_anomalib_data():
    out = _run(
        "import anomalib.data\n"
        "from anomalib.data.datamodules.base.image import AnomalibDataModule\n"
        "names = set()\n"
        "stack = [AnomalibDataModule]\n"
        "while stack:\n"
        "    cls = stack.pop(); names.add(cls.__name__); stack.extend(cls.__subclasses__())\n"
        "print(sorted(n for n in names if n.startswith(('MultiClass', 'Mixed'))))\n"
        "seen = [n for n in ('MultiClassFolder', 'MultiClassMVTecAD') if hasattr(anomalib.data, n)]\n"
        "print('get_datamodule sees', seen)"
    )
    assert "get_datamodule sees ['MultiClassFolder', 'MultiClassMVTecAD']" in out
    for name in ("MultiClassMVTecAD", "MultiClassVisA", "MultiClassRealIAD", "MultiClassBTAD", "MultiClassFolder"):
        assert name in out


@pytest.mark.slow  # a fresh anomalib process (8 s); tests/unit/test_help.py checks the help text in-process
@pytest.mark.parametrize("model", ["UniAD"])
def test_cli_help_resolves_the_short_model_name(model):
    result = subprocess.run(
        ["anomalib", "train", "--model", model, "--print_config"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"anomalib_multiclass.models.{model}" in result.stdout


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(path, id=path.stem, marks=pytest.mark.slow)  # a fresh anomalib process each (8 s)
        for path in sorted(CONFIGS.glob("*.yaml"))
    ],
)
def test_shipped_configs_resolve_through_the_plain_cli(config, tmp_path):
    # cwd outside the checkout: the classes must come from the installed package via the start-up hook.
    result = subprocess.run(
        ["anomalib", "train", "--config", str(config), "--print_config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"{config.name}: {result.stderr[-2000:]}"
    assert "class_path: anomalib_multiclass.models." in result.stdout
    assert "class_path: anomalib_multiclass.data." in result.stdout


@pytest.mark.slow
def test_anomalib_benchmark_pipeline_runs_our_model_by_short_name(synthetic_root, monkeypatch):
    """anomalib's benchmark job generator resolves `UniAD`/`MultiClassFolder` and reports our metrics."""
    import functools

    import anomalib.pipelines.benchmark.job as job_module
    from anomalib.engine import Engine
    from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator

    from tests.conftest import TINY_UNIAD

    # The job builds its own Engine with Lightning's default 1000 epochs: one is enough to prove the path.
    monkeypatch.setattr(job_module, "Engine", functools.partial(Engine, max_epochs=1))
    init_args = {key: list(value) if isinstance(value, tuple) else value for key, value in TINY_UNIAD.items()}
    args = {
        "seed": 0,
        "model": {"class_path": "UniAD", "init_args": init_args},
        "data": {
            "class_path": "MultiClassFolder",
            "init_args": {"root": str(synthetic_root), "num_workers": 0, "train_batch_size": 6},
        },
    }
    jobs = list(BenchmarkJobGenerator(accelerator="cpu").generate_jobs(args, None))
    assert len(jobs) == 1
    result = jobs[0].run()
    assert result["image_AUROC"] == result["image_AUROC/mean"]
    for category in ("brick", "coffee", "grass"):
        assert 0.0 <= result[f"image_AUROC/{category}"] <= 1.0
    assert "pixel_AUROC/pooled" in result


def test_publishing_does_not_depend_on_how_our_modules_are_written(monkeypatch):
    """The hook knows a module is complete because it ran it to the end, not from its last statement."""
    import anomalib.models

    import anomalib_multiclass.models as ours
    from anomalib_multiclass import _registration

    monkeypatch.delattr(ours, "__all__")
    monkeypatch.delattr(anomalib.models, "UniAD")
    _registration._publish("anomalib.models")
    assert anomalib.models.UniAD is ours.UniAD
