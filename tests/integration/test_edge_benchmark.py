"""The edge and LGC-claim benchmark scripts run end to end at their smoke size and write their reports."""

import json
import os
import subprocess
import sys

import pytest


def _run(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # about 4 minutes on 2 cores
def test_edge_smoke(tmp_path):
    pytest.importorskip("nncf")
    _run("benchmarks.edge", "--size", "smoke", "--models", "UniAD", "LGC", "--output-dir", str(tmp_path))
    report = (tmp_path / "edge.md").read_text()
    assert "python -m benchmarks.edge --size smoke --models UniAD LGC" in report
    for model in ("UniAD", "LGC"):
        for variant in ("fp32", "bf16", "INT8, encoder float (default)", "INT8, encoder INT8, f32 rest"):
            assert f"| {model} | {variant} |" in report
    assert "failed" not in report, report
    results = json.loads((tmp_path / "edge.json").read_text())["results"]
    int8 = results["LGC"]["variants"]["INT8, encoder float"]
    assert int8["INT8 quantizers"] > 0
    assert set(int8["auroc"]) == {"brick", "coffee", "grass", "mean"}
    assert int8["MiB"] < results["LGC"]["variants"]["fp32"]["MiB"] / 2
    # interleaved timing: every variant has as many rounds, and counters that say in which precision layers ran
    assert len({len(v["bN s"]) for v in results["LGC"]["variants"].values()}) == 1
    assert results["LGC"]["variants"]["fp32"]["counters"]["ms_by_precision"].keys() <= {"f32", "int8", "other"}
    assert results["LGC"]["variants"]["INT8, encoder INT8"]["counters"]["layers_by_precision"]["int8"] > 0
    assert results["LGC"]["variants"]["fp32"]["counters"]["top_nodes"][0]["name"]  # the costliest layer, by name
    assert "- **LGC**: default INT8 (INT8, encoder float)" in report  # the per-model why line


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


@pytest.mark.slow  # about 3 minutes on 2 cores
def test_lgc_claim_smoke(tmp_path):
    _run("benchmarks.lgc_claim", "--size", "smoke", "--output-dir", str(tmp_path))
    report = (tmp_path / "lgc_claim.md").read_text()
    for setting in ("unified", "all-in-all"):
        assert f"| LGC | {setting}, 1 seed |" in report
        assert f"| RD joint (contrastive off) | {setting}, 1 seed |" in report
        assert f"| LGC − RD joint | {setting}, paired by seed |" in report
    assert "failed" not in report, report
