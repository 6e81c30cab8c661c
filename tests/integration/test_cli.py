"""The plain `anomalib` command trains, tests, predicts and exports our models on generated data."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_LGC, TINY_OMNI_AD, TINY_RLR, TINY_UNIAD

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _anomalib(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(["anomalib", *args], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, (
        f"anomalib {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _model_args(model: str = "UniAD", init_args: dict | None = None) -> list[str]:
    args = ["--model", model]
    for key, value in (TINY_UNIAD if init_args is None else init_args).items():
        text = (
            str(list(value)).replace(" ", "")
            if isinstance(value, tuple)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        args += [f"--model.{key}", text]
    return args


@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    # Through a shipped config file (`anomalib train --config configs/<model>.yaml`), scaled down by overrides.
    result = _anomalib(
        "train",
        "--config",
        str(CONFIGS / "quickstart_uniad.yaml"),
        *_model_args()[2:],
        "--data",
        "MultiClassFolder",
        "--data.root",
        str(synthetic_root),
        "--data.num_workers",
        "0",
        "--data.train_batch_size",
        "6",
        "--trainer.max_epochs",
        "1",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--default_root_dir",
        str(root),
    )
    return root, result


def test_train_prints_and_writes_the_per_category_table(trained_run):
    root, result = trained_run
    assert "Per-category test metrics (3 categories)" in result.stdout
    # stdout is a pipe, where the progress bar draws nothing: one plain line per epoch instead
    assert "\n[UniAD] epoch 1/1: loss " in result.stdout
    csv_files = list(root.rglob("per_category_metrics.csv"))
    assert len(csv_files) == 1
    rows = [line.split(",")[0] for line in csv_files[0].read_text().splitlines()]
    assert rows == ["category", "brick", "coffee", "grass", "mean", "pooled"]
    pictures = list((csv_files[0].parent / "images").rglob("*.png"))
    assert {p.relative_to(csv_files[0].parent / "images").parts[0] for p in pictures} == {"brick", "coffee", "grass"}


@pytest.mark.slow
def test_test_and_export_from_the_checkpoint(trained_run, synthetic_root, tmp_path):
    root, _ = trained_run
    checkpoint = next(root.rglob("*.ckpt"))
    result = _anomalib(
        "test",
        *_model_args(),
        "--data",
        "MultiClassFolder",
        "--data.root",
        str(synthetic_root),
        "--data.num_workers",
        "0",
        "--ckpt_path",
        str(checkpoint),
        "--default_root_dir",
        str(tmp_path / "test"),
    )
    assert "Per-category test metrics" in result.stdout
    _anomalib(
        "export",
        *_model_args(),
        "--export_type",
        "onnx",
        "--ckpt_path",
        str(checkpoint),
        "--export_root",
        str(tmp_path / "export"),
        "--input_size",
        "[64,64]",
    )
    assert list(Path(tmp_path / "export").rglob("model.onnx"))


@pytest.mark.slow
def test_predict_writes_a_heat_map_per_image(trained_run, synthetic_root, tmp_path):
    root, _ = trained_run
    checkpoint = next(root.rglob("*.ckpt"))
    images = synthetic_root / "coffee" / "test"
    _anomalib(
        "predict",
        *_model_args(),
        "--data",
        str(images),
        "--ckpt_path",
        str(checkpoint),
        "--default_root_dir",
        str(tmp_path),
    )
    assert {path.name for path in tmp_path.rglob("*.png")} >= {path.name for path in images.rglob("*.png")}


# Every other model through the plain command with short names: train (fit + test), then predict and export from
# the checkpoint.
OTHER_MODELS = {"RLR": TINY_RLR, "OmniAD": TINY_OMNI_AD, "LGC": TINY_LGC}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(OTHER_MODELS))
def test_plain_cli_trains_tests_and_exports(model, synthetic_root, tmp_path):
    data = ["--data", "MultiClassFolder", "--data.root", str(synthetic_root), "--data.num_workers", "0"]
    result = _anomalib(
        "train",
        *_model_args(model, OTHER_MODELS[model]),
        *data,
        "--data.train_batch_size",
        "6",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--default_root_dir",
        str(tmp_path / "train"),
    )
    assert "Per-category test metrics (3 categories)" in result.stdout
    checkpoint = next((tmp_path / "train").rglob("*.ckpt"))
    # predict on a folder of images (no datamodule, no category): heat-map pictures, one per image
    images = synthetic_root / "brick" / "test"
    expected = {path.name for path in images.rglob("*.png")}
    _anomalib(
        "predict",
        *_model_args(model, OTHER_MODELS[model]),
        "--data",
        str(images),
        "--ckpt_path",
        str(checkpoint),
        "--default_root_dir",
        str(tmp_path / "predict"),
    )
    assert {path.name for path in (tmp_path / "predict").rglob("*.png")} >= expected
    _anomalib(
        "export",
        *_model_args(model, OTHER_MODELS[model]),
        "--export_type",
        "openvino",
        "--ckpt_path",
        str(checkpoint),
        "--export_root",
        str(tmp_path / "export"),
        "--input_size",
        "[64,64]",
    )
    assert list((tmp_path / "export").rglob("model.xml"))
    assert list((tmp_path / "export").rglob("multiclass_metadata.json"))
