"""Per-category evaluation: the multi-class papers' protocol inside anomalib's ``Evaluator``.

Every metric is computed on each category's test images from the model's **raw** anomaly scores and maps (as
the papers and their official code do: thresholds, normalisation and the class a model predicts do not touch
them), then averaged over the categories (``mean``: the number the papers report, e.g. "mean image AUROC over
the 15 MVTec AD categories"). ``pooled`` is the same metrics over all images mixed, computed on the scores a
user of one unified model thresholds: the post-processor's (class-aware) normalised ones. When several datasets
are mixed into one run (categories named ``<dataset>/<category>``), each dataset gets its own mean,
``mean[<dataset>]``.

A metric that a category's test data cannot define (no defective image, no normal image, no masks) is ``n/a``
in the printed table and ``null`` in the CSV/JSON, left out of every mean (which says over how many categories
it runs), and named in one warning.

Under DDP every rank's images are gathered on rank 0 (the distributed sampler's padding duplicates dropped by
image path) before anything is computed; rank 0 prints and writes the table, every rank logs the same values.

Memory: pixel-level metrics keep every pixel score of the test set (as anomalib's own pixel AUROC does): about
5 bytes × pixels × test images, plus as much again while a metric is computed. Pass a shorter ``metrics`` list
for very large test sets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Max
from anomalib.metrics.base import AnomalibMetric
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from anomalib_multiclass.evaluation.table import (
    ALL_CATEGORY,
    dataset_of,
    format_report,
    is_summary_row,
    write_results,
)
from anomalib_multiclass.utils.distributed import broadcast, gather_records

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
__all__ = [
    "ALL_CATEGORY",
    "DEFAULT_METRICS",
    "METRICS",
    "PerCategoryEvaluator",
    "dataset_of",
    "is_summary_row",
    "undefined_reason",
]


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


def undefined_reason(values: dict[str, torch.Tensor | None], level: str) -> str | None:
    """Why the ``level`` (``"image"`` or ``"pixel"``) metrics are undefined on ``values``; ``None`` if defined."""
    fields = IMAGE_FIELDS if level == "image" else PIXEL_FIELDS
    prediction, target = values.get(fields[0]), values.get(fields[1])
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


def _compute_metric(name: str, values: dict[str, torch.Tensor]) -> float:
    cls, (prediction, target) = METRICS[name]
    metric = cls(fields=[prediction, target], strict=False)
    metric.update(SimpleNamespace(**{prediction: _unit_range(values[prediction]), target: values[target]}))
    try:
        with torch.no_grad():
            return float(metric.compute())
    except (RuntimeError, ValueError, IndexError) as error:
        logger.warning("%s could not be computed (%s); reported as n/a.", name, error)
        return math.nan


class PerCategoryEvaluator(Evaluator):
    """anomalib ``Evaluator`` that reports every test metric per category, their mean and the pooled value.

    Args:
        metrics: Test metrics by name, from ``image_AUROC``, ``image_AP``, ``image_F1Max``, ``pixel_AUROC``,
            ``pixel_AP``, ``pixel_F1Max``, ``AUPRO``.
        val_metrics: Validation metrics (anomalib's, pooled); default image and pixel AUROC.
        output_dir: Where the CSV/JSON go; default the trainer's log directory (or ``default_root_dir``).
        compute_on_cpu: As anomalib's ``Evaluator``.
    """

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        val_metrics: Sequence[AnomalibMetric] | None = None,
        output_dir: str | Path | None = None,
        compute_on_cpu: bool = True,
    ) -> None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            msg = f"Unknown metrics {unknown}. Available: {list(METRICS)}."
            raise ValueError(msg)
        if val_metrics is None:
            val_metrics = [
                AUROC(fields=list(IMAGE_FIELDS), prefix="image_"),
                AUROC(fields=list(PIXEL_FIELDS), prefix="pixel_", strict=False),
            ]
        super().__init__(val_metrics=val_metrics, test_metrics=None, compute_on_cpu=compute_on_cpu)
        self.metric_names = list(metrics)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._records: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, float]] = {}
        self.notes: dict[str, str] = {}
        self.counted: dict[str, dict[str, int]] = {}

    def reset(self) -> None:
        """Forget what was accumulated."""
        self._records = []

    # --- accumulation ------------------------------------------------------------------------------------------
    def update(self, batch: Any) -> None:
        """Keep one batch's raw ``pred_score``/``gt_label``/``anomaly_map``/``gt_mask``, category and class.

        Must see the batch before a post-processor normalises it (:meth:`setup` puts the evaluator first). The
        values are kept and every metric computed once at the end, per category.
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
            return
        if "pred_score" not in record:  # as anomalib's post-processor: the map's maximum
            record["pred_score"] = record["anomaly_map"].flatten(1).amax(dim=1)
        record["pred_score"] = record["pred_score"].reshape(-1).float()
        record["category"] = list(getattr(batch, "category", None) or [ALL_CATEGORY] * size)
        paths = getattr(batch, "image_path", None)
        record["image_path"] = [str(p) for p in paths] if paths is not None else [""] * size
        self._records.append(record)

    def _by_category(self, records: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        """Concatenate the records' fields per category."""
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

    # --- computation -------------------------------------------------------------------------------------------
    def _compute_one(self, values: dict[str, torch.Tensor]) -> tuple[dict[str, float], list[str]]:
        results, reasons = {}, []
        for level in ("image", "pixel"):
            reason = undefined_reason(values, level)
            fields = IMAGE_FIELDS if level == "image" else PIXEL_FIELDS
            names = [m for m in self.metric_names if METRICS[m][1] == fields]
            if reason is not None and names:
                reasons.append(f"{level} metrics: {reason}")
            for name in names:
                results[name] = math.nan if reason is not None else _compute_metric(name, values)
        return {name: results[name] for name in self.metric_names}, reasons

    def compute(self, post_processor: Any = None) -> dict[str, dict[str, float]]:
        """``{category: {metric: value}, ..., "mean": ..., "pooled": ...}``; NaN where a metric is undefined.

        Category rows are computed on the raw scores and maps. ``pooled`` uses ``post_processor``'s normalisation
        (each image by its true class when the post-processor is class-aware), the raw values without one.
        Namespaced categories (``<dataset>/<category>``) add ``mean[<dataset>]`` rows before ``mean``.
        """
        per_category = self._by_category(self._records)
        results: dict[str, dict[str, float]] = {}
        self.notes = {}
        for category, values in per_category.items():
            results[category], reasons = self._compute_one(values)
            if reasons:
                self.notes[category] = "; ".join(reasons)
                logger.warning(
                    "Category %r: %s. Reported as n/a and left out of the means.", category, self.notes[category]
                )
        categories = list(results)
        self.counted = {}
        datasets = list(dict.fromkeys(d for d in map(dataset_of, categories) if d is not None))
        for dataset in datasets:
            self._add_mean(results, f"mean[{dataset}]", [c for c in categories if dataset_of(c) == dataset])
        self._add_mean(results, "mean", categories)
        if per_category:
            pooled = {
                name: torch.cat([values[name] for values in per_category.values()])
                for name in per_category[categories[0]]
                if all(name in values for values in per_category.values())
            }
            results["pooled"], reasons = self._compute_one(_normalised(pooled, post_processor))
            if reasons:
                self.notes["pooled"] = "; ".join(reasons)
        else:
            results["pooled"] = dict.fromkeys(self.metric_names, math.nan)
        self.results = results
        return results

    def _add_mean(self, results: dict[str, dict[str, float]], row: str, categories: list[str]) -> None:
        """Mean of each metric over ``categories``, leaving out those where it is undefined."""
        mean, counted = {}, {}
        for name in self.metric_names:
            values = [results[c][name] for c in categories if not math.isnan(results[c][name])]
            mean[name] = sum(values) / len(values) if values else math.nan
            counted[name] = len(values)
        results[row] = mean
        self.counted[row] = counted
        levels = {}
        for name, n in counted.items():
            levels.setdefault("image" if name.startswith("image") else "pixel", set()).add(n)
        partial = [f"{level} metrics over {min(ns)} of {len(categories)}" for level, ns in levels.items()]
        if any(min(ns) < len(categories) for ns in levels.values()):
            self.notes[row] = "; ".join(partial) + " categories"

    # --- Lightning hooks ---------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Anomalib's set-up, then make sure this evaluator sees each test batch before any post-processor does."""
        super().setup(trainer, pl_module, stage)
        callbacks = getattr(trainer, "callbacks", None)
        if not isinstance(callbacks, list) or self not in callbacks:
            return
        position = callbacks.index(self)
        first_post = next(
            (i for i, c in enumerate(callbacks) if i < position and hasattr(c, "post_process_batch")), None
        )
        if first_post is not None:
            callbacks.remove(self)
            callbacks.insert(first_post, self)
            logger.debug("PerCategoryEvaluator moved before the post-processor: metrics read the raw scores.")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from empty accumulators."""
        del trainer, pl_module
        self.reset()

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's raw predictions (this callback runs before the post-processor)."""
        del trainer, pl_module, batch_idx, dataloader_idx
        self.update(outputs if outputs is not None else batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather over ranks, compute on rank 0, share, then log everywhere and print/write on rank 0."""
        self._records = gather_records(self._records)
        post_processor = getattr(pl_module, "post_processor", None)
        results = self.compute(post_processor) if self._records is not None else None
        results, self.notes, self.counted = broadcast((results, self.notes, self.counted))
        self.results = results
        names = [m for m in self.metric_names if any(not math.isnan(v[m]) for v in results.values())]
        for row, values in results.items():
            for name in names:
                if not math.isnan(values[name]):
                    pl_module.log(f"{name}/{row}", values[name], sync_dist=False)
        for name in names:  # plain anomalib names = the mean over categories (the papers' number)
            if not math.isnan(results["mean"][name]):
                pl_module.log(name, results["mean"][name], sync_dist=False)
        self._report(trainer, names)
        self._records = []

    @rank_zero_only
    def _report(self, trainer: Trainer, names: list[str]) -> None:
        # Lightning's logger (INFO, to the console by default): shown where Lightning's own messages are
        rank_zero_info(f"\n{format_report(self.results, names, self.notes)}\n")
        directory = self._directory(trainer)
        if directory is not None:
            self.write(directory)

    def _directory(self, trainer: Trainer) -> Path | None:
        if self.output_dir is not None:
            return self.output_dir
        for candidate in (getattr(trainer, "log_dir", None), getattr(trainer, "default_root_dir", None)):
            if candidate:
                return Path(candidate)
        return None

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``per_category_metrics.csv`` and ``.json`` into ``directory`` (undefined values as ``null``)."""
        return write_results(Path(directory), self.results, self.metric_names, self.notes, self.counted)


def _normalised(values: dict[str, torch.Tensor], post_processor: Any) -> dict[str, torch.Tensor]:
    """``values`` with scores and maps normalised as ``post_processor`` normalises a test batch."""
    normalize = getattr(post_processor, "normalize_batch", None)
    if normalize is None or not getattr(post_processor, "enable_normalization", False):
        return values
    batch = SimpleNamespace(**{"anomaly_map": None, "pred_class": None, **values})
    normalize(batch)
    normalised = {**values, "pred_score": batch.pred_score}
    if batch.anomaly_map is not None:
        normalised["anomaly_map"] = batch.anomaly_map
    return normalised
