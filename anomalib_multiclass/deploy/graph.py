"""Exact simplifications of an exported OpenVINO graph: operations that can never change an output, removed.

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
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

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


def simplify_ir(model_path: str | Path) -> int:
    """:func:`drop_dead_softmax_guards` on an IR file, rewritten in place when anything was removed."""
    import openvino as ov

    model_path = Path(model_path)
    model = ov.Core().read_model(model_path)
    removed = drop_dead_softmax_guards(model)
    if removed:
        with TemporaryDirectory(dir=model_path.parent) as tmp:
            rewritten = Path(tmp) / model_path.name
            ov.save_model(model, rewritten, compress_to_fp16=False)
            del model
            for suffix in (".xml", ".bin"):
                os.replace(rewritten.with_suffix(suffix), model_path.with_suffix(suffix))
    return removed
