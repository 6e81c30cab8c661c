"""deploy.graph: a softmax NaN guard goes only where it can never fire; sines become a polynomial as exact as sin."""

import logging

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
ops = pytest.importorskip("openvino.opset13")

from anomalib_multiclass.deploy.graph import (  # noqa: E402
    dead_softmax_guards,
    drop_dead_softmax_guards,
    replace_sines,
    save_in_place,
    simplify,
)

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


def test_an_ir_file_is_saved_in_place_with_the_rewrites(tmp_path):
    path = tmp_path / "model.xml"
    ov.save_model(_guarded_attention(np.where(np.eye(4, dtype=bool), HIDDEN, 0.0)[None]), path)
    model = ov.Core().read_model(path)
    assert simplify(model) == 1
    save_in_place(model, path)
    assert "IsNaN" not in _ops(ov.Core().read_model(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]  # no temporary left


def _sine(shape: list[int]) -> "ov.Model":
    x = ops.parameter(shape, np.float32, name="x")
    return ov.Model([ops.result(ops.sin(x))], [x], "sine")


def test_sines_become_a_polynomial_as_exact_as_the_float32_sin():
    """|x| up to 300 (MINT-AD multiplies its arguments by 30), and near 0 where sin(x) ≈ x is small."""
    x = np.concatenate([np.linspace(-300, 300, 600_001), np.linspace(-1e-3, 1e-3, 2001)]).astype(np.float32)
    exact = np.sin(x.astype(np.float64))
    model = _sine([-1])
    plugin_sin = _run(model, x)
    assert replace_sines(model) == 1
    assert "Sin" not in _ops(model)
    polynomial = _run(model, x)
    error = np.abs(polynomial - exact)
    assert error.max() < 2e-7  # the float32 Sin of the plugin: 3e-8, one rounding of a value below 1 is 6e-8
    small = np.abs(x) < 1e-3
    np.testing.assert_allclose(polynomial[small], exact[small], rtol=1e-6, atol=0)
    assert np.abs(plugin_sin - exact).max() < 1e-7  # the reference the claim is about
    assert replace_sines(model) == 0
