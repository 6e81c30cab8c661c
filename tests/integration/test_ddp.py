"""Past one process: the same per-category numbers under Lightning DDP (2 CPU processes, gloo) as in one.

Each `anomalib ... --trainer.devices 2 --trainer.strategy ddp` is a subprocess (Lightning's DDP launcher re-runs
the command once per extra process), so these tests are slow.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_LGC, TINY_OMNI_AD, TINY_RLR, TINY_UNIAD
from tests.helpers.callbacks import same_statistics

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
TINY_MINT_AD = {k: v for k, v in TINY_UNIAD.items() if k not in {"neighbor_size"}}
MODELS = {"UniAD": TINY_UNIAD, "MintAD": TINY_MINT_AD, "RLR": TINY_RLR, "OmniAD": TINY_OMNI_AD, "LGC": TINY_LGC}


def _model_args(model: str) -> list[str]:
    args = ["--model", model]
    for key, value in MODELS[model].items():
        text = str(list(value)).replace(" ", "") if isinstance(value, tuple) else str(value)
        args += [f"--model.{key}", text.lower() if isinstance(value, bool) else text]
    return args


def _anomalib(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}
    ddp = (
        ["--trainer.devices", str(devices), "--trainer.strategy", "ddp"] if devices > 1 else ["--trainer.devices", "1"]
    )
    command = ["anomalib", *args, "--trainer.accelerator", "cpu", *ddp]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result


def _data(root: Path) -> list[str]:
    # 4 test images per category and batch 3: the distributed sampler pads the last shard with duplicates
    return ["--data", "MultiClassFolder", "--data.root", str(root), "--data.num_workers", "0",
            "--data.train_batch_size", "4", "--data.eval_batch_size", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_train")
    _anomalib("fit", *_model_args("UniAD"), *_data(synthetic_root), "--trainer.max_epochs", "1",
              "--default_root_dir", str(root))  # fmt: skip
    return next(root.rglob("*.ckpt"))


def test_thresholds_learnt_with_one_and_two_processes_are_equal(checkpoint, synthetic_root, tmp_path):
    dumps = []
    for devices in (1, 2):
        path = tmp_path / f"statistics_{devices}.json"
        callback = [
            {"class_path": "tests.helpers.callbacks.DumpPostProcessorStatistics", "init_args": {"path": str(path)}}
        ]
        _anomalib("validate", *_model_args("UniAD"), *_data(synthetic_root), "--ckpt_path", str(checkpoint),
                  "--trainer.callbacks", json.dumps(callback), "--default_root_dir", str(tmp_path / f"v{devices}"),
                  devices=devices)  # fmt: skip
        dumps.append(json.loads(path.read_text()))
    assert [d["world_size"] for d in dumps] == [1, 2]
    assert same_statistics(*dumps), dumps
    assert all(v == v for v in dumps[1]["class_image_threshold"])  # learnt for every category (not NaN)


def test_one_checkpoint_one_table_whatever_the_number_of_processes(checkpoint, synthetic_root, tmp_path):
    tables, outputs = [], []
    for devices in (1, 2):
        root = tmp_path / f"test_{devices}"
        result = _anomalib("test", *_model_args("UniAD"), *_data(synthetic_root), "--ckpt_path", str(checkpoint),
                           "--default_root_dir", str(root), devices=devices)  # fmt: skip
        (path,) = root.rglob("per_category_metrics.json")  # exactly one copy written
        tables.append(json.loads(path.read_text()))
        outputs.append(result.stdout)
    assert tables[0] == tables[1]
    assert outputs[1].count("Per-category test metrics") == 1  # printed by rank 0 only


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_trains_validates_and_tests_under_ddp(model, synthetic_root, tmp_path):
    result = _anomalib("train", *_model_args(model), *_data(synthetic_root), "--trainer.max_epochs", "1",
                       "--default_root_dir", str(tmp_path), devices=2)  # fmt: skip
    assert result.stdout.count("Per-category test metrics (3 categories)") == 1
    assert len(list(tmp_path.rglob("per_category_metrics.csv"))) == 1
