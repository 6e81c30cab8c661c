"""Per-category evaluation: the multi-class papers' protocol inside anomalib's ``Evaluator``.

Every metric is computed on each category's test images, then averaged over the categories (the number
the papers report, e.g. "mean image AUROC over the 15 MVTec AD categories"); the same metrics over all
images mixed (the stricter "absolute-unified" view) are reported as ``pooled``. At the end of a test run
the table is printed, logged to the Lightning logger (``image_AUROC/<category>``, ``image_AUROC/mean``,
``image_AUROC/pooled``; the mean also under the plain anomalib name ``image_AUROC``), and written as
``per_category_metrics.csv`` / ``.json`` in the run's directory. When several datasets are mixed into one run
(``MixedMultiClassDataModule``: categories named ``<dataset>/<category>``), each dataset also gets its own mean
over its categories, ``mean[<dataset>]``, the per-dataset columns of the papers' all-in-all tables.

Memory: pixel-level metrics keep every pixel score of the test set (as anomalib's own pixel AUROC does),
once, concatenated per category at the end: about 5 bytes × pixels × test images,
plus as much again while a metric is computed. Pass a shorter ``metrics`` list
for very large test sets.
"""

from __future__ import annotations

import csv
import json
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
ALL_CATEGORY = "all"
SUMMARY_ROWS = ("mean", "pooled")


def is_summary_row(name: str) -> bool:
    """``mean``, ``pooled`` and the per-dataset ``mean[<dataset>]`` rows, as opposed to categories."""
    return name in SUMMARY_ROWS or (name.startswith("mean[") and name.endswith("]"))


def dataset_of(category: str) -> str | None:
    """The dataset prefix of a namespaced category (``visa/candle`` -> ``visa``), else ``None``."""
    prefix, separator, _ = category.partition("/")
    return prefix if separator else None


def _select(batch: Any, index: torch.Tensor) -> SimpleNamespace:
    """The fields the metrics read, restricted to the images at ``index``."""
    fields = {}
    for name in (*IMAGE_FIELDS, *PIXEL_FIELDS):
        value = getattr(batch, name, None)
        if isinstance(value, torch.Tensor):
            value = value.detach()[index.to(value.device)].cpu()
            if name == "anomaly_map" and value.dim() == 4:
                value = value.squeeze(1)
        fields[name] = value
    return SimpleNamespace(**fields)


def _value(metric: AnomalibMetric) -> float:
    try:
        with torch.no_grad():
            return float(metric.compute())
    except (RuntimeError, ValueError, IndexError) as error:  # e.g. only normal images in a category
        logger.debug("Metric %s undefined: %s", metric.name, error)
        return math.nan


def format_table(results: dict[str, dict[str, float]], metric_names: Sequence[str]) -> str:
    """Plain-text table: one row per category, then the per-dataset means (if any), mean and pooled."""
    header = ["category", *metric_names]
    rows = [[name] + [f"{values.get(m, math.nan):.4f}" for m in metric_names] for name, values in results.items()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))

    sep = "  ".join("-" * w for w in widths)
    body = [line(r) for r in rows]
    n_cat = sum(not is_summary_row(name) for name in results)  # compute() puts the summary rows last
    return "\n".join([line(header), sep, *body[:n_cat], sep, *body[n_cat:]])


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
        self._per_category: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.results: dict[str, dict[str, float]] = {}

    def reset(self) -> None:
        """Forget what was accumulated."""
        self._per_category = {}

    def update(self, batch: Any) -> None:
        """Accumulate one batch: ``pred_score``/``gt_label``/``anomaly_map``/``gt_mask`` and ``category``.

        A batch without ``category`` counts as one category, ``all``. The values are kept and the metrics
        computed once at the end: torchmetrics decides per ``update`` whether to squash scores outside
        [0, 1] with a sigmoid, so batch-wise updates of raw anomaly scores would mix squashed and raw values.
        """
        size = next(
            (len(v) for v in (getattr(batch, f, None) for f in ("pred_score", "anomaly_map")) if v is not None), 0
        )
        categories = getattr(batch, "category", None) or [ALL_CATEGORY] * size
        for category in dict.fromkeys(categories):
            index = torch.tensor([i for i, c in enumerate(categories) if c == category])
            part = _select(batch, index)
            store = self._per_category.setdefault(category, {})
            for name, value in vars(part).items():
                if value is not None:
                    store.setdefault(name, []).append(value)

    def _compute_one(self, store: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        values = {name: torch.cat(parts) for name, parts in store.items()}
        results = {}
        for name in self.metric_names:
            cls, fields = METRICS[name]
            if any(field not in values for field in fields):
                results[name] = math.nan
                continue
            metric = cls(fields=list(fields), strict=False)
            metric.update(SimpleNamespace(**{field: values[field] for field in fields}))
            results[name] = _value(metric)
        return results

    def compute(self) -> dict[str, dict[str, float]]:
        """``{category: {metric: value}, ..., "mean": ..., "pooled": ...}``; NaN where a metric is undefined.

        Namespaced categories (``<dataset>/<category>``) add ``mean[<dataset>]`` rows before ``mean``.
        """
        results = {category: self._compute_one(store) for category, store in sorted(self._per_category.items())}
        categories = list(results)
        datasets = list(dict.fromkeys(d for d in map(dataset_of, categories) if d is not None))
        for dataset in datasets:
            own = [results[c] for c in categories if dataset_of(c) == dataset]
            results[f"mean[{dataset}]"] = self._mean(own)
        mean = self._mean([results[c] for c in categories])
        pooled_store: dict[str, list[torch.Tensor]] = {}
        for store in self._per_category.values():
            for name, parts in store.items():
                pooled_store.setdefault(name, []).extend(parts)
        results["mean"] = mean
        results["pooled"] = (
            self._compute_one(pooled_store) if pooled_store else dict.fromkeys(self.metric_names, math.nan)
        )
        self.results = results
        return results

    def _mean(self, rows: Sequence[dict[str, float]]) -> dict[str, float]:
        """Mean of each metric over ``rows``, ignoring categories where it is undefined."""
        mean = {}
        for name in self.metric_names:
            values = [row[name] for row in rows if not math.isnan(row[name])]
            mean[name] = sum(values) / len(values) if values else math.nan
        return mean

    # --- Lightning hooks -------------------------------------------------------------------------
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
        """Accumulate the post-processed batch."""
        del trainer, pl_module, outputs, batch_idx, dataloader_idx
        self.update(batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, log, print and write the per-category table."""
        results = self.compute()
        names = [m for m in self.metric_names if any(not math.isnan(v[m]) for v in results.values())]
        for row, values in results.items():
            for name in names:
                if not math.isnan(values[name]):
                    pl_module.log(f"{name}/{row}", values[name], sync_dist=False)
        for name in names:  # plain anomalib names = the mean over categories (the papers' number)
            if not math.isnan(results["mean"][name]):
                pl_module.log(name, results["mean"][name], sync_dist=False)
        table = format_table(results, names)
        n_categories = sum(not is_summary_row(row) for row in results)
        print(f"\nPer-category test metrics ({n_categories} categories):\n{table}\n")
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
        """Write ``per_category_metrics.csv`` and ``.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = directory / "per_category_metrics.csv", directory / "per_category_metrics.json"
        with csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["category", *self.metric_names])
            for row, values in self.results.items():
                writer.writerow([row, *(values[m] for m in self.metric_names)])
        json_path.write_text(json.dumps(self.results, indent=2, allow_nan=True))
        logger.info("Per-category metrics written to %s and %s", csv_path, json_path)
        return csv_path, json_path
