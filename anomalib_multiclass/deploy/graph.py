"""Rewrites of an exported OpenVINO graph that make it faster on the CPU plugin without changing what it decides.

torch's ONNX export of ``scaled_dot_product_attention`` with a boolean mask writes the mask as an additive constant
(``finfo(float32).min`` where a key is hidden) and guards the softmax against rows whose every key is hidden:
``Select(IsNaN(softmax), 0, softmax)``. Where the constant leaves at least one key visible in every row, no row
is ever all hidden and the guard never fires; the CPU plugin still runs it for every attention weight, and it
breaks the fusion of the attention around it. RLR's masked-key attention (every query sees all but its own
window) and UniAD's neighbour-masked attention are such masks. ``benchmarks/results/edge.md`` gives the cost on
trained models, per layer.

A guard is removed only where the graph proves it dead: the softmax (over its last axis) takes ``x + M`` with ``M``
a constant in which every row keeps one entry above :data:`HIDDEN_KEY_FLOOR`. Any other shape keeps its guard,
said in a log line. The ONNX export keeps its guards (ONNX Runtime is not what this was measured on).

``Sin`` (MINT-AD's implicit neural representation: its synthesis layers, on every token) has no vectorised kernel in
the CPU plugin: it runs in a reference kernel (``ref_any_f32``), 11-14 % of MINT-AD's INT8 time
(``benchmarks/results/edge.md``). :func:`replace_sines` writes it as a range reduction and a polynomial of
``Multiply``/``Add``, which the plugin runs vectorised and fuses into the matrix product before it. In float32 it is
within 2e-7 of ``sin`` for |x| up to 300 (MINT-AD's arguments are scaled by ω₀ = 30), about one rounding of ``sin``'s
value: the exported model decides as before (``tests/unit/test_export_graph.py``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

# sin(x) = (-1)^k sin(r) with k = round(x / π) and r = x - kπ in [-π/2, π/2], where the odd Taylor polynomial of
# degree 13 is within 7e-10 of sin (the first term left out: (π/2)¹⁵/15!). π is split into PI_HIGH (8 significant
# bits: k PI_HIGH is exact for |k| < 2¹⁶) and the rest, so that r keeps float32 accuracy for large x (Cody-Waite).
SIN_TAYLOR_COEFFICIENTS = tuple((-1) ** n / math.factorial(2 * n + 1) for n in range(1, 7))
PI_HIGH = 3.140625
PI_LOW = math.pi - PI_HIGH

# an additive mask entry at or below this hides its key (torch writes finfo(float32).min, about -3.4e38; in bf16
# that value becomes -inf): a row is all hidden when all its entries are
HIDDEN_KEY_FLOOR = -1e30


def _is_zero_constant(node: Any) -> bool:
    data = _constant_data(node)
    return data is not None and not np.any(data)


def _same_output(a: Any, b: Any) -> bool:
    return a.get_node().get_friendly_name() == b.get_node().get_friendly_name() and a.get_index() == b.get_index()


def _mask_of(softmax: Any) -> np.ndarray | None:
    """The additive constant of ``softmax(x + M)`` over the last axis, ``None`` if the softmax is not of that form."""
    rank = softmax.get_output_partial_shape(0).rank
    axis = int(softmax.get_attributes().get("axis", -1))
    if rank.is_dynamic or axis not in {-1, rank.get_length() - 1}:
        return None
    add = softmax.input_value(0).get_node()
    if add.get_type_name() != "Add":
        return None
    constants = [_constant_data(add.input_value(i).get_node()) for i in range(2)]
    constants = [data for data in constants if data is not None]
    return constants[0] if len(constants) == 1 else None


def _constant_data(node: Any) -> np.ndarray | None:
    """A constant's values as float32, through the ``Convert`` of an FP16-compressed IR; ``None`` if not one."""
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    return np.asarray(node.get_data(), dtype=np.float32)


def dead_softmax_guards(model: ov.Model) -> tuple[list[Any], list[str]]:
    """The softmax NaN guards of ``model`` that can never fire, and the names of those kept.

    A guard is ``Select(IsNaN(s), 0, s)``; it is kept when its softmax is not ``softmax(x + M)`` with a constant
    ``M``, or when ``M`` hides every key of some row.
    """
    dead, kept = [], []
    for select in model.get_ordered_ops():
        if select.get_type_name() != "Select":
            continue
        condition = select.input_value(0).get_node()
        if condition.get_type_name() != "IsNaN":
            continue
        guarded = condition.input_value(0)
        if not (_is_zero_constant(select.input_value(1).get_node()) and _same_output(select.input_value(2), guarded)):
            continue
        mask = _mask_of(guarded.get_node()) if guarded.get_node().get_type_name() == "Softmax" else None
        if mask is None or np.all(mask <= HIDDEN_KEY_FLOOR, axis=-1).any():
            kept.append(select.get_friendly_name())
        else:
            dead.append(select)
    return dead, kept


def drop_dead_softmax_guards(model: ov.Model) -> int:
    """Remove the guards :func:`dead_softmax_guards` proves dead (in place); returns how many."""
    dead, kept = dead_softmax_guards(model)
    for select in dead:
        select.output(0).replace(select.input_value(2))
    if kept:
        logger.info(
            "Exported model: %d softmax NaN guard(s) kept (%s): their mask is not a constant, or hides every key of "
            "some row.",
            len(kept),
            ", ".join(kept[:3]),
        )
    if dead:
        model.validate_nodes_and_infer_types()
    return len(dead)


def replace_sines(model: ov.Model) -> int:
    """Replace every ``Sin`` of ``model`` by range reduction and a polynomial (in place); returns how many."""
    from openvino import opset13 as ops

    sines = [op for op in model.get_ordered_ops() if op.get_type_name() == "Sin"]
    for sine in sines:
        x = sine.input_value(0)
        element = x.get_element_type().to_dtype()

        def constant(value: float, element: np.dtype = element) -> Any:
            return ops.constant(np.asarray(value, dtype=element))

        half_turns = ops.round(ops.multiply(x, constant(1 / math.pi)), "half_to_even")
        reduced = ops.subtract(
            ops.subtract(x, ops.multiply(half_turns, constant(PI_HIGH))), ops.multiply(half_turns, constant(PI_LOW))
        )
        sign = ops.add(ops.multiply(ops.floor_mod(half_turns, constant(2.0)), constant(-2.0)), constant(1.0))
        reduced = ops.multiply(reduced, sign)  # sin is odd: (-1)^k sin(r) = sin((-1)^k r)
        squared = ops.multiply(reduced, reduced)
        series = constant(SIN_TAYLOR_COEFFICIENTS[-1])
        for coefficient in reversed((1.0, *SIN_TAYLOR_COEFFICIENTS[:-1])):
            series = ops.add(ops.multiply(series, squared), constant(coefficient))
        polynomial = ops.multiply(series, reduced)
        polynomial.set_friendly_name(sine.get_friendly_name())
        sine.output(0).replace(polynomial.output(0))
    if sines:
        model.validate_nodes_and_infer_types()
    return len(sines)


def simplify(model: ov.Model) -> int:
    """Every rewrite of this module on ``model`` (in place): dead softmax guards, sines; returns how many."""
    return drop_dead_softmax_guards(model) + replace_sines(model)


def save_in_place(model: ov.Model, model_path: str | Path) -> None:
    """Save ``model`` over the IR at ``model_path`` (.xml and .bin), replaced only once both are written."""
    import openvino as ov

    model_path = Path(model_path)
    with TemporaryDirectory(dir=model_path.parent) as tmp:
        rewritten = Path(tmp) / model_path.name
        ov.save_model(model, rewritten, compress_to_fp16=False)
        for suffix in (".xml", ".bin"):
            os.replace(rewritten.with_suffix(suffix), model_path.with_suffix(suffix))
