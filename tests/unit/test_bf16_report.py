"""benchmarks.bf16_training's statistics: a speed-up is called a gain only when the paired steps show it."""

import pytest

from benchmarks.bf16_training import across_processes as cross
from benchmarks.bf16_training import gains, report, step_statistics

LOSSES = [2.0, 1.5, 1.0]


def test_a_steady_speed_up_is_a_gain_beyond_noise():
    fp32 = [1.00, 1.02, 0.98, 1.01, 0.99, 1.00]
    bf16 = [0.50, 0.52, 0.49, 0.50, 0.51, 0.50]
    result = step_statistics(fp32, bf16, LOSSES, [2.0, 1.5, 1.1])
    assert result["verdict"] == "faster beyond noise"
    assert result["geometric speed-up"] == pytest.approx(2.0, rel=0.02)
    low, high = result["speed-up 95% CI"]
    assert low < result["geometric speed-up"] < high
    assert result["loss gap largest"] == pytest.approx(0.1)  # 1.1 against 1.0
    assert result["loss gap mean"] == pytest.approx(0.1 / 3)


def test_steps_that_go_both_ways_are_within_noise():
    fp32 = [1.0, 0.6, 1.0, 0.6, 1.0, 0.6]
    bf16 = [0.6, 1.0, 0.6, 1.0, 0.6, 1.05]
    assert step_statistics(fp32, bf16, LOSSES, LOSSES)["verdict"] == "within noise"


def test_a_steady_slow_down_is_named_as_one():
    result = step_statistics([0.5, 0.52, 0.49, 0.5], [1.0, 1.01, 0.99, 1.02], LOSSES, LOSSES)
    assert result["verdict"] == "slower beyond noise"
    assert result["geometric speed-up"] < 1


def test_the_report_names_each_model_under_its_verdict_and_keeps_failures():
    fast = {
        "batch": 8,
        "steps": 7,
        "fp32": {"step s": 1.0, "losses": LOSSES},
        "bf16-mixed": {"step s": 0.5, "losses": LOSSES},
    }
    fast |= {"speed-up": 2.0} | step_statistics([1.0, 1.01, 0.99, 1.0], [0.5, 0.5, 0.51, 0.49], LOSSES, LOSSES)
    results = {"UniAD": fast, "LGC": {"error": "RuntimeError('boom')"}}
    text = report(
        results, "python -m benchmarks.bf16_training --steps 7", 1.0, {"cores": 2, "cpu": "x", "commit": "abc"}
    )
    assert "| LGC |" in text
    assert "failed: RuntimeError('boom')" in text
    assert "faster beyond noise with bf16-mixed: UniAD 2.00x" in gains(results)
    assert "slower beyond noise: none" in gains(results)
    assert "load average not recorded" in text


def _process(speed_up: float) -> dict:
    run = {"batch": 8, "steps": 5, "fp32": {"step s": 1.0, "losses": LOSSES}, "bf16-mixed": {"step s": 1 / speed_up}}
    run["bf16-mixed"]["losses"] = LOSSES
    fp32 = [1.0, 1.02, 0.98, 1.0]
    return run | step_statistics(
        fp32, [t / speed_up * f for t, f in zip(fp32, (1, 1.01, 0.99, 1), strict=True)], LOSSES, LOSSES
    )


def test_the_verdict_is_taken_over_processes_not_over_one_process_steps():
    # each process alone is a clear gain; the processes disagree (1.05x, 1.40x, 0.95x): within noise overall
    runs = [_process(1.05), _process(1.40), _process(0.95)]
    assert all(run["verdict"] != "within noise" for run in runs)
    combined = cross(runs)
    assert combined["verdict"] == "within noise"
    assert combined["per process"] == pytest.approx([1.05, 1.40, 0.95], rel=0.01)
    assert combined["processes"] == 3
    steady = cross([_process(1.45), _process(1.40), _process(1.50)])
    assert steady["verdict"] == "faster beyond noise"
    assert steady["geometric speed-up"] == pytest.approx(1.45, rel=0.02)


def test_one_process_is_not_tested_and_a_failed_process_fails_the_row():
    assert cross([_process(1.5)])["verdict"] == "not tested (one process)"
    assert cross([_process(1.5), {"error": "RuntimeError('boom')"}]) == {"error": "RuntimeError('boom')"}
