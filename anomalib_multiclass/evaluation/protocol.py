"""The papers' evaluation protocol on collected outputs: every metric per category on raw scores, then means.

Kept apart from the Lightning callback (``per_category.py``) so that validation, test, the "separate" mode and
the benchmarks compute the table the same way from the same records.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.metrics import AUPR, AUPRO, AUROC, F1Max
from anomalib.metrics.base import AnomalibMetric

from anomalib_multiclass.evaluation.table import ALL_CATEGORY, dataset_of
from anomalib_multiclass.utils.distributed import on_this_process

logger = logging.getLogger(__name__)

IMAGE_FIELDS = ("pred_score", "gt_label")
PIXEL_FIELDS = ("anomaly_map", "gt_mask")
METRICS: dict[str, tuple[type[AnomalibMetric], tuple[str, str]]] = {
    "image_AUROC": (AUROC, IMAGE_FIELDS),
    "image_AP": (AUPR, IMAGE_FIELDS),
    "image_F1Max": (F1Max, IMAGE_FIELDS),
    "pixel_AUROC": (AUROC, PIXEL_FIELDS),
    "pixel_AP": (AUPR, PIXEL_FIELDS),
    "pixel_F1Max": (F1Max, PIXEL_FIELDS),
    "AUPRO": (AUPRO, PIXEL_FIELDS),
}
DEFAULT_METRICS = tuple(METRICS)


def check_metric_names(names: Sequence[str]) -> None:
    """Refuse unknown metric names, listing the known ones."""
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        msg = f"Unknown metrics {unknown}. Available: {list(METRICS)}."
        raise ValueError(msg)


def batch_record(batch: Any) -> dict[str, Any] | None:
    """A batch's raw outputs, labels, class indices, categories and paths, copied to the CPU (``None``: empty).

    A batch without ``category`` (a plain anomalib batch) is one category, ``all``; without ``pred_score`` the
    score is the map's maximum, as anomalib's post-processor takes it.
    """
    record: dict[str, Any] = {}
    for name in (*IMAGE_FIELDS, *PIXEL_FIELDS, "class_index"):
        value = getattr(batch, name, None)
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu", copy=True)
            if name == "anomaly_map" and value.dim() == 4:
                value = value.squeeze(1)
            if name == "gt_mask":
                value = value.bool()
            record[name] = value
    size = next((len(record[f]) for f in ("pred_score", "anomaly_map") if f in record), 0)
    if size == 0:
        return None
    if "pred_score" not in record:
        record["pred_score"] = record["anomaly_map"].flatten(1).amax(dim=1)
    record["pred_score"] = record["pred_score"].reshape(-1).float()
    record["category"] = list(getattr(batch, "category", None) or [ALL_CATEGORY] * size)
    paths = getattr(batch, "image_path", None)
    record["image_path"] = [str(p) for p in paths] if paths is not None else [""] * size
    return record


def by_category(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
    """The records' tensors concatenated per category (categories sorted)."""
    parts: dict[str, dict[str, list[torch.Tensor]]] = {}
    for record in records:
        categories = record["category"]
        for category in dict.fromkeys(categories):
            index = torch.tensor([i for i, c in enumerate(categories) if c == category])
            store = parts.setdefault(category, {})
            for name, value in record.items():
                if isinstance(value, torch.Tensor):
                    store.setdefault(name, []).append(value[index])
    return {
        category: {name: torch.cat(values) for name, values in store.items()}
        for category, store in sorted(parts.items())
    }


def _unit_range(values: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of raw scores into [0, 1].

    torchmetrics squashes scores outside [0, 1] with a sigmoid, which in float32 turns every raw score above
    about 17 into exactly 1.0 (ties). A min-max rescale in float64 keeps the order, so AUROC, AP, F1max and AUPRO,
    which depend only on the order, equal their values on the raw scores.
    """
    values = values.double()
    low, high = values.min(), values.max()
    span = high - low
    return ((values - low) / span if span > 0 else torch.zeros_like(values)).float()


def undefined_reason(values: dict[str, torch.Tensor], level: str) -> str | None:
    """Why the ``level`` (``"image"`` or ``"pixel"``) metrics are undefined on ``values``; ``None`` if defined."""
    prediction_name, target_name = IMAGE_FIELDS if level == "image" else PIXEL_FIELDS
    prediction, target = values.get(prediction_name), values.get(target_name)
    if prediction is None:
        return "no anomaly scores" if level == "image" else "no anomaly maps"
    if target is None:
        return "no image labels" if level == "image" else "no ground-truth masks"
    positives = int((target > 0).sum())
    if positives == 0:
        return "no defective test image" if level == "image" else "no defect pixel in the masks"
    if positives == target.numel():
        return "no normal test image" if level == "image" else "no normal pixel in the masks"
    return None


def compute_metric(name: str, values: dict[str, torch.Tensor]) -> float:
    """One metric on raw values (rescaled into [0, 1] without changing their order); NaN if it fails."""
    cls, (prediction, target) = METRICS[name]
    metric = on_this_process(cls(fields=[prediction, target], strict=False))  # rank 0 holds all data
    metric.update(SimpleNamespace(**{prediction: _unit_range(values[prediction]), target: values[target]}))
    try:
        with torch.no_grad():
            return float(metric.compute())
    except (RuntimeError, ValueError, IndexError) as error:
        logger.warning("%s could not be computed (%s); reported as n/a.", name, error)
        return math.nan


def compute_row(values: dict[str, torch.Tensor], metric_names: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """Every metric on one set of values; NaN, with the reason, where the data cannot define it."""
    results, reasons = {}, []
    for level, fields in (("image", IMAGE_FIELDS), ("pixel", PIXEL_FIELDS)):
        names = [m for m in metric_names if METRICS[m][1] == fields]
        reason = undefined_reason(values, level)
        if reason is not None and names:
            reasons.append(f"{level} metrics: {reason}")
        for name in names:
            results[name] = math.nan if reason is not None else compute_metric(name, values)
    return {name: results[name] for name in metric_names}, reasons


@dataclass
class CategoryTable:
    """Rows ``{category | mean[<dataset>] | mean | pooled: {metric: value}}``, NaN where undefined.

    ``notes`` says why a row has undefined values or over how many categories a mean runs; ``counted`` is the
    number of categories behind each mean, per metric; ``pooled_values`` are the (normalised) values ``pooled``
    was computed on.
    """

    results: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    counted: dict[str, dict[str, int]] = field(default_factory=dict)
    pooled_values: dict[str, torch.Tensor] = field(default_factory=dict)

    def add_mean(self, row: str, categories: Sequence[str], metric_names: Sequence[str]) -> None:
        """Mean of each metric over ``categories``, leaving out those where it is undefined."""
        mean, counted = {}, {}
        for name in metric_names:
            values = [self.results[c][name] for c in categories if not math.isnan(self.results[c][name])]
            mean[name] = sum(values) / len(values) if values else math.nan
            counted[name] = len(values)
        self.results[row] = mean
        self.counted[row] = counted
        least: dict[str, int] = {}
        for name, n in counted.items():
            level = "image" if name.startswith("image") else "pixel"
            least[level] = min(n, least.get(level, n))
        if any(n < len(categories) for n in least.values()):
            parts = [f"{level} metrics over {n} of {len(categories)}" for level, n in least.items()]
            self.notes[row] = "; ".join(parts) + " categories"


def category_table(
    records: Sequence[dict[str, Any]],
    metric_names: Sequence[str],
    post_processor: Any = None,
    pooled: bool = True,
) -> CategoryTable:
    """The per-category table of ``records`` (one per batch, see :func:`batch_record`).

    Category rows are computed on the raw scores and maps. ``pooled`` uses ``post_processor``'s normalisation
    (each image by its true class when the post-processor is class-aware), the raw values without one.
    Namespaced categories (``<dataset>/<category>``) add ``mean[<dataset>]`` rows before ``mean``.
    """
    per_category = by_category(records)
    table = CategoryTable()
    for category, values in per_category.items():
        table.results[category], reasons = compute_row(values, metric_names)
        if reasons:
            table.notes[category] = "; ".join(reasons)
            logger.warning(
                "Category %r: %s. Reported as n/a and left out of the means.", category, table.notes[category]
            )
    categories = list(table.results)
    for dataset in dict.fromkeys(d for d in map(dataset_of, categories) if d is not None):
        table.add_mean(f"mean[{dataset}]", [c for c in categories if dataset_of(c) == dataset], metric_names)
    table.add_mean("mean", categories, metric_names)
    if not pooled:
        return table
    if per_category:
        shared = [name for name in per_category[categories[0]] if all(name in v for v in per_category.values())]
        mixed = {name: torch.cat([values[name] for values in per_category.values()]) for name in shared}
        table.pooled_values = normalised(mixed, post_processor)
        table.results["pooled"], reasons = compute_row(table.pooled_values, metric_names)
        if reasons:
            table.notes["pooled"] = "; ".join(reasons)
    else:
        table.results["pooled"] = dict.fromkeys(metric_names, math.nan)
    return table


def normalised(values: dict[str, torch.Tensor], post_processor: Any) -> dict[str, torch.Tensor]:
    """``values`` with scores and maps normalised as ``post_processor`` normalises a test batch."""
    normalize = getattr(post_processor, "normalize_batch", None)
    if normalize is None or not getattr(post_processor, "enable_normalization", False):
        return values
    batch = SimpleNamespace(**{"anomaly_map": None, "pred_class": None, **values})
    normalize(batch)
    result = {**values, "pred_score": batch.pred_score}
    if batch.anomaly_map is not None:
        result["anomaly_map"] = batch.anomaly_map
    return result
