"""The benchmark script runs end to end at its smoke size and writes every section of the report."""

import os
import subprocess
import sys


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
    for section in ("## Proxy quality", "## Inference speed", "## Training speed", "## Memory and disk"):
        assert section in report
    for model in ("UniAD", "MintAD", "Padim (anomalib)"):
        assert f"| {model} |" in report
