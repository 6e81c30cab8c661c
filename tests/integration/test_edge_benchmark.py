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
        assert "Tried: INT8, encoder " in line  # the variants other than the default
        assert "Previous run: default INT8" in line
        if "**misses**" in line:  # what INT8 leaves untouched, from the counters
            assert "with every INT8 layer free the layers' time would allow at most" in line


def test_the_ceiling_of_a_missed_goal_comes_from_the_counters():
    """Float layers' time bounds INT8's speed-up: fp32 layers' ms over the float layers' ms of the INT8 export."""
    from benchmarks.edge import _ceiling

    int8 = {"ms": 100.0, "ms_by_precision": {"int8": 40.0, "bf16": 50.0, "f32": 10.0}, "compute_ms": 30.0}
    fp32 = {"ms": 240.0, "ms_by_precision": {"f32": 240.0}, "compute_ms": 180.0}
    text = _ceiling(int8, fp32)
    assert "Of its INT8 layers' 100 ms, 60 ms run in floating point" in text
    assert "at most 4.00x fp32's 240 ms" in text
    assert "Convolutions and matrix products take 30% of it" in text
    assert "(fp32: 25%)" in text  # the share of the other layers in fp32
    del int8["compute_ms"]  # counters of a run before compute_ms was recorded
    assert "Convolutions" not in _ceiling(int8, fp32)


def test_timing_in_fresh_processes_gives_each_process_ratio_and_the_verdict_their_median(tmp_path):
    """Two tiny exports timed interleaved in two fresh processes: every process's ratio is kept, the speed-up is
    their median, and the range reaches the report."""
    import openvino
    import torch

    from benchmarks.edge import speedup_range, speedups, time_all

    paths = {}
    for name, width in (("fp32", 32), ("small", 8)):
        layers = (torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(width, 1, 1))
        paths[name] = tmp_path / f"{name}.xml"
        converted = openvino.convert_model(torch.nn.Sequential(*layers).eval(), input=[-1, 3, 16, 16])
        openvino.save_model(converted, paths[name])
    exports = {"fp32": {"path": paths["fp32"]}, "int8": {"path": paths["small"]}}
    cfg = {"repeats": 2, "speed_batch": 2}
    from benchmarks import edge

    variants = {"fp32": ("fp32", {"INFERENCE_PRECISION_HINT": "f32"}), "INT8, encoder float": ("int8", {})}
    original = edge.VARIANTS
    edge.VARIANTS = variants
    try:
        values = time_all(exports, 16, cfg, processes=2)
    finally:
        edge.VARIANTS = original
    int8, fp32 = values["INT8, encoder float"], values["fp32"]
    assert len(int8["bN × fp32 runs"]) == len(int8["b1 × fp32 runs"]) == 2  # one ratio per process
    assert len(int8["b1 s"]) == 2 * 2 * 3  # both processes' rounds
    b1, bn = speedups(int8, fp32)
    assert min(int8["bN × fp32 runs"]) <= bn <= max(int8["bN × fp32 runs"])
    assert b1 > 0
    low, high = speedup_range(int8).split(" / ")[1].split("-")
    assert float(low) <= float(high)
    assert speedup_range(fp32).startswith("1.00-1.00")
