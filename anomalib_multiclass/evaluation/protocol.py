"""The papers' evaluation protocol on streamed statistics: every metric per category on raw scores, then means.

Kept apart from the Lightning callback (``per_category.py``) so that validation, test, the "separate" mode and
the benchmarks compute the table the same way from the same :class:`StreamingStatistics`.

What is exact and what is binned: image-level metrics (AUROC, AP, F1-max) are computed on every image's score,
exactly; pixel-level metrics (AUROC, AP, F1-max, AUPRO) on each category's dyadic histogram of pixel scores, each
with an error bound computed from the histogram (``anomalib_multiclass/statistics/binned.py``); a bound above
:data:`TOLERANCE` is named in a warning. ``bounds`` holds them per row and metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from anomalib.metrics import AUPR, AUROC, F1Max
from anomalib.metrics.base import AnomalibMetric

from anomalib_multiclass.evaluation.table import dataset_of
from anomalib_multiclass.statistics import CategoryStatistics, DyadicHistogram, StreamingStatistics
from anomalib_multiclass.utils.distributed import on_this_process

logger = logging.getLogger(__name__)

IMAGE_METRICS: dict[str, type[AnomalibMetric]] = {"image_AUROC": AUROC, "image_AP": AUPR, "image_F1Max": F1Max}
PIXEL_METRICS = ("pixel_AUROC", "pixel_AP", "pixel_F1Max", "AUPRO")
METRICS = (*IMAGE_METRICS, *PIXEL_METRICS)
DEFAULT_METRICS = METRICS
TOLERANCE = 1e-3  # pixel metrics' error bounds above this are reported


def check_metric_names(names: Sequence[str]) -> None:
    """Refuse unknown metric names, listing the known ones."""
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        msg = f"Unknown metrics {unknown}. Available: {list(METRICS)}."
        raise ValueError(msg)


def _unit_range(values: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of raw scores into [0, 1].

    torchmetrics squashes scores outside [0, 1] with a sigmoid, which in float32 turns every raw score above
    about 17 into exactly 1.0 (ties). A min-max rescale in float64 keeps the order, so AUROC, AP and F1-max, which
    depend only on the order, equal their values on the raw scores.
    """
    values = values.double()
    low, high = values.min(), values.max()
    span = high - low
    return ((values - low) / span if span > 0 else torch.zeros_like(values)).float()


def image_metric(name: str, scores: torch.Tensor, labels: torch.Tensor) -> float:
    """One image-level metric on every image's score (exact); NaN if it fails."""
    metric = on_this_process(IMAGE_METRICS[name](fields=["pred_score", "gt_label"], strict=False))
    metric.update(SimpleNamespace(pred_score=_unit_range(scores), gt_label=labels))
    try:
        with torch.no_grad():
            return float(metric.compute())
    except (RuntimeError, ValueError, IndexError) as error:
        logger.warning("%s could not be computed (%s); reported as n/a.", name, error)
        return math.nan


def _image_reason(scores: torch.Tensor, labels: torch.Tensor | None) -> str | None:
    if scores.numel() == 0:
        return "no anomaly scores"
    if labels is None:
        return "no image labels"
    positives = int((labels > 0).sum())
    if positives == 0:
        return "no defective test image"
    return "no normal test image" if positives == labels.numel() else None


def _pixel_reason(histogram: DyadicHistogram, with_mask: int, without_mask: int) -> str | None:
    if histogram.empty and without_mask == 0 and with_mask == 0:
        return "no anomaly maps"
    if with_mask == 0:
        return "no ground-truth masks"
    if without_mask:
        return f"{without_mask} images without ground-truth masks"
    assert histogram.counts is not None
    if float(histogram.counts[1].sum()) == 0:
        return "no defect pixel in the masks"
    return "no normal pixel in the masks" if float(histogram.counts[0].sum()) == 0 else None


def compute_row(
    scores: torch.Tensor,
    labels: torch.Tensor | None,
    histogram: DyadicHistogram,
    regions: int,
    metric_names: Sequence[str],
    masks: tuple[int, int] = (1, 0),
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Every metric of one row: (values, error bounds of the binned ones, reasons for the undefined ones).

    ``masks`` counts the row's images with and without ground-truth masks.
    """
    results, bounds, reasons = {}, {}, []
    image_names = [m for m in metric_names if m in IMAGE_METRICS]
    reason = _image_reason(scores, labels)
    if reason is not None and image_names:
        reasons.append(f"image metrics: {reason}")
    for name in image_names:
        results[name] = math.nan if reason is not None or labels is None else image_metric(name, scores, labels)
    pixel_names = [m for m in metric_names if m in PIXEL_METRICS]
    reason = _pixel_reason(histogram, *masks) if pixel_names else None
    if reason is not None:
        reasons.append(f"pixel metrics: {reason}")
    summary = histogram.summary(regions) if pixel_names and reason is None else None
    for name in pixel_names:
        if summary is None or (name == "AUPRO" and regions == 0):
            results[name] = math.nan
            continue
        value, bound = {
            "pixel_AUROC": summary.auroc,
            "pixel_AP": summary.average_precision,
            "pixel_F1Max": lambda: summary.f1_max()[:2],
            "AUPRO": summary.aupro,
        }[name]()
        results[name], bounds[name] = value, bound
    return {name: results[name] for name in metric_names}, bounds, reasons


def category_row(
    stats: CategoryStatistics, metric_names: Sequence[str]
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """:func:`compute_row` of one category's raw scores and pixels."""
    values = stats.image_values()
    masks = (stats.images_with_mask, stats.images_without_mask)
    return compute_row(values["pred_score"], values.get("gt_label"), stats.pixels, stats.regions, metric_names, masks)


@dataclass
class CategoryTable:
    """Rows ``{category | mean[<dataset>] | mean | pooled: {metric: value}}``, NaN where undefined.

    ``notes`` says why a row has undefined values or over how many categories a mean runs; ``counted`` is the
    number of categories behind each mean, per metric; ``bounds`` the error bound of each binned (pixel) value.
    """

    results: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    counted: dict[str, dict[str, int]] = field(default_factory=dict)
    bounds: dict[str, dict[str, float]] = field(default_factory=dict)

    def add_row(self, row: str, computed: tuple[dict[str, float], dict[str, float], list[str]]) -> None:
        """One computed row, its bounds and its notes (a warning for a category with undefined metrics)."""
        self.results[row], self.bounds[row], reasons = computed
        if reasons:
            self.notes[row] = "; ".join(reasons)
            if row != "pooled":
                logger.warning("Category %r: %s. Reported as n/a and left out of the means.", row, self.notes[row])
        loose = {name: bound for name, bound in self.bounds[row].items() if bound > TOLERANCE}
        if loose:
            logger.warning(
                "%s: binned pixel metrics known only to within %s (pixel scores crowd into few bins: an extreme "
                "outlier stretches the range). Pass a larger num_bins to the evaluator for tighter values.",
                row,
                ", ".join(f"{name} ±{bound:.1e}" for name, bound in loose.items()),
            )

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


def category_table(statistics: StreamingStatistics, metric_names: Sequence[str], pooled: bool = True) -> CategoryTable:
    """The per-category table of reduced ``statistics``.

    Category rows are computed on the raw scores and maps. ``pooled`` mixes every category's images: on their
    normalised scores and maps where the statistics were folded with a normaliser, on the raw ones otherwise.
    Namespaced categories (``<dataset>/<category>``) add ``mean[<dataset>]`` rows before ``mean``.
    """
    table = CategoryTable()
    for category, stats in statistics:
        table.add_row(category, category_row(stats, metric_names))
    categories = list(table.results)
    for dataset in dict.fromkeys(d for d in map(dataset_of, categories) if d is not None):
        table.add_mean(f"mean[{dataset}]", [c for c in categories if dataset_of(c) == dataset], metric_names)
    table.add_mean("mean", categories, metric_names)
    if pooled:
        table.add_row("pooled", pooled_row(statistics, metric_names))
    return table


def pooled_row(
    statistics: StreamingStatistics, metric_names: Sequence[str]
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """The metrics of all images mixed (normalised values where the statistics have them)."""
    parts = [stats.image_values() for _, stats in statistics]
    if not parts:
        return dict.fromkeys(metric_names, math.nan), {}, []
    normalised = torch.cat([p["normalised_score"] for p in parts])
    raw = torch.cat([p["pred_score"] for p in parts])
    with_normaliser = normalised.numel() > 0 and not bool(torch.isnan(normalised).any())
    scores = normalised if with_normaliser else raw
    labels = torch.cat([p["gt_label"] for p in parts]) if all("gt_label" in p for p in parts) else None
    everything = [stats for _, stats in statistics]
    masks = (sum(s.images_with_mask for s in everything), sum(s.images_without_mask for s in everything))
    if with_normaliser and not statistics.pooled.empty:
        histogram, regions = statistics.pooled, statistics.pooled_regions
    else:
        histogram = DyadicHistogram.merged([s.pixels for s in everything], statistics.num_bins)
        regions = sum(s.regions for s in everything)
    return compute_row(scores, labels, histogram, regions, metric_names, masks)
