"""A run at Real-IAD's shape: its layout and 30 category names, a few thousand small images, one model, through the
plain `anomalib` command; the table has every category, memory stays bounded, the feature cache keeps its bound."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import TINY_UNIAD

pytestmark = pytest.mark.slow

CACHE_BOUND = 8 * 2**20  # about half the features of the 1,200 training images (12 KiB each): the bound must bite

# Runs a command in its own Python process and prints that command's peak RSS: the test process's RUSAGE_CHILDREN
# holds the largest child of the whole session (an earlier benchmark or browser test), not this run's.
PEAK_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print(f'PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def test_a_realiad_shaped_run_trains_and_tests_all_30_categories_in_bounded_memory(tmp_path):
    from anomalib.data.datasets.image.realiad import CATEGORIES

    from anomalib_multiclass.data.synthetic_realiad import make_synthetic_realiad

    root = make_synthetic_realiad(tmp_path / "realiad", n_train=40, n_test_good=20, n_test_defect=20, image_size=64)
    model = ["--model", "UniAD"]
    for key, value in TINY_UNIAD.items():
        text = str(list(value)).replace(" ", "") if isinstance(value, tuple) else str(value).lower()
        model += [f"--model.{key}", text if key != "backbone" else str(value)]
    command = [
        "anomalib", "train", *model, "--model.feature_cache_max_bytes", str(CACHE_BOUND),
        "--data", "MultiClassRealIAD", "--data.root", str(root), "--data.resolution", "256",
        "--data.num_workers", "0", "--data.train_batch_size", "32", "--data.eval_batch_size", "64",
        "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--default_root_dir", str(tmp_path / "results"),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    wrapped = [sys.executable, "-c", PEAK_RSS_WRAPPER, *command]
    result = subprocess.run(wrapped, capture_output=True, text=True, env=env, check=False, timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    (peak_kib,) = re.findall(r"PEAK_RSS_KIB (\d+)", result.stderr)
    peak_rss = int(peak_kib) * 1024
    (table_path,) = (tmp_path / "results").rglob("per_category_metrics.json")
    table = json.loads(table_path.read_text())
    assert sorted(row for row in table if row in CATEGORIES) == sorted(CATEGORIES)
    assert table["mean"]["n_categories"]["pixel_AUROC"] == 30
    (scores_path,) = (tmp_path / "results").rglob("per_image_scores.csv")
    assert len(scores_path.read_text().splitlines()) == 1 + 30 * 40  # one line per test image
    output = result.stdout + result.stderr
    caches = re.findall(r"feature cache[a-z, ]*? (\d+) images \(([\d.]+) (B|KiB|MiB|GiB)\)", output)
    assert caches, [line for line in output.splitlines() if "cache" in line or "epoch" in line][-10:]
    images, size, unit = caches[-1]
    held = float(size) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    assert int(images) < 30 * 40  # not every training image fits: the bound decided
    assert held <= CACHE_BOUND
    print(f"\nReal-IAD-shaped run: peak RSS {peak_rss / 2**30:.2f} GiB, feature cache {images} images ({size} {unit})")
    assert peak_rss < 6 * 2**30
