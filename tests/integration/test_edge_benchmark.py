"""The edge report's per-model "why" lines, computed from a saved run (the scripts themselves run end to end in
``test_benchmark_smoke.py``, every section at its smoke size)."""

import json
import os
import subprocess
import sys


def _run(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_edge_report_says_per_model_why_from_saved_results(tmp_path):
    """The "why" lines are computed from a saved run (no measuring): goal status, counters, what was tried."""
    import shutil
    from pathlib import Path

    results = Path(__file__).parents[2] / "benchmarks" / "results"
    saved = shutil.copy(results / "edge.json", tmp_path / "edge.json")
    _run("benchmarks.edge", "--render", str(saved), "--previous", str(results / "edge.json"))
    report = (tmp_path / "edge.md").read_text()
    why = report[report.index("Why, model by model") :]
    models = json.loads((results / "edge.json").read_text())["results"]
    for model in models:
        line = next(line for line in why.splitlines() if line.startswith(f"- **{model}**"))
        assert "goal met" in line or "misses" in line
        assert "costliest layer type" in line
        assert "Tried: INT8, encoder float, f32 rest" in line
        assert "Previous run: default INT8" in line
