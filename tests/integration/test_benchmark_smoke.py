"""The benchmark script runs end to end at its smoke size and writes every section of the report."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow  # about 10 minutes on 2 cores; .ci/run runs it after the default suite
def test_benchmark_smoke(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--size", "smoke", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = output.read_text()
    for section in (
        "## Proxy quality",
        "## Inference speed",
        "## Training speed",
        "## All-in-all",
        "## RLR attention",
        "## Memory and disk",
    ):
        assert section in report
    models = ("UniAD", "MintAD", "RLR", "OmniAD", "LGC", "RLR level 1", "Padim (anomalib)", "PatchCore (anomalib)")
    for model in (*models, "ReverseDistillation (anomalib)"):
        assert f"| {model} |" in report
    assert "| LGC (contrastive off = RD joint) | unified" in report
    assert "| LGC (contrastive off = RD joint) | all-in-all" in report
    assert "all-in-all" in report
    assert "not built yet" not in report
    assert "failed" not in report, report
