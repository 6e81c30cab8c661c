"""deploy.graph: a softmax NaN guard is removed only where the graph proves it can never fire, outputs unchanged."""

import logging

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
ops = pytest.importorskip("openvino.opset13")

from anomalib_multiclass.deploy.graph import dead_softmax_guards, drop_dead_softmax_guards, simplify_ir  # noqa: E402

HIDDEN = np.finfo(np.float32).min  # what torch's export writes where a key is hidden


def _guarded_attention(mask: np.ndarray | None) -> "ov.Model":
    """softmax(x + mask) over the last axis (x alone without a mask), then torch's NaN guard, as exported."""
    x = ops.parameter([2, 4, 4], np.float32, name="x")
    logits = ops.add(x, ops.constant(mask.astype(np.float32))) if mask is not None else ops.relu(x)
    weights = ops.softmax(logits, -1)
    guarded = ops.select(ops.is_nan(weights), ops.constant(np.zeros((), np.float32)), weights)
    return ov.Model([ops.result(ops.multiply(guarded, ops.constant(np.float32(2.0))))], [x], "attention")


def _run(model: "ov.Model", x: np.ndarray) -> np.ndarray:
    return next(iter(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x).values()))


def _ops(model: "ov.Model") -> set[str]:
    return {op.get_type_name() for op in model.get_ops()}


def test_a_guard_whose_rows_all_keep_a_key_is_removed_and_the_outputs_stay_the_same():
    window = np.where(np.eye(4, dtype=bool), HIDDEN, 0.0)[None]  # every query hides itself, sees the other three
    model = _guarded_attention(window)
    x = np.random.default_rng(0).normal(size=(2, 4, 4)).astype(np.float32)
    before = _run(model, x)
    assert drop_dead_softmax_guards(model) == 1
    assert not {"IsNaN", "Select"} & _ops(model)
    np.testing.assert_array_equal(_run(model, x), before)


def test_a_guard_that_can_fire_is_kept(caplog):
    mask = np.zeros((1, 4, 4))
    mask[0, 2] = -np.inf  # query 2 sees no key: its softmax row is NaN, the guard makes it 0
    mask[0, 3] = HIDDEN  # all hidden too (finfo.min: NaN once the plugin runs it in bf16, where it becomes -inf)
    model = _guarded_attention(mask)
    x = np.zeros((2, 4, 4), np.float32)
    with caplog.at_level(logging.INFO):
        assert drop_dead_softmax_guards(model) == 0
    assert "kept" in caplog.text
    assert {"IsNaN", "Select"} <= _ops(model)
    out = _run(model, x)
    assert np.isfinite(out).all()
    assert not out[:, 2].any()
    row_hidden = np.zeros((1, 4, 4))
    row_hidden[0, 3] = HIDDEN
    assert len(dead_softmax_guards(_guarded_attention(row_hidden))[1]) == 1


def test_a_guard_without_a_constant_mask_is_kept():
    dead, kept = dead_softmax_guards(_guarded_attention(None))
    assert dead == []
    assert len(kept) == 1


def test_an_ir_file_is_rewritten_in_place_only_when_a_guard_goes(tmp_path):
    path = tmp_path / "model.xml"
    ov.save_model(_guarded_attention(np.where(np.eye(4, dtype=bool), HIDDEN, 0.0)[None]), path)
    assert simplify_ir(path) == 1
    assert "IsNaN" not in _ops(ov.Core().read_model(path))
    stamp = path.stat().st_mtime_ns
    assert simplify_ir(path) == 0
    assert path.stat().st_mtime_ns == stamp
