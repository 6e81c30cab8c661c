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
from typing import Any

from anomalib.metrics import Evaluator
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from anomalib_multiclass.evaluation.protocol import (
    DEFAULT_METRICS,
    METRICS,
    CategoryTable,
    batch_record,
    category_table,
    check_metric_names,
    undefined_reason,
)
from anomalib_multiclass.evaluation.table import ALL_CATEGORY, dataset_of, format_report, is_summary_row, write_results
from anomalib_multiclass.report import report_after_test
from anomalib_multiclass.utils.console import show
from anomalib_multiclass.utils.distributed import broadcast, gather_records

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_CATEGORY",
    "DEFAULT_METRICS",
    "METRICS",
    "PerCategoryEvaluator",
    "dataset_of",
    "is_summary_row",
    "undefined_reason",
]


class PerCategoryEvaluator(Evaluator):
    """anomalib ``Evaluator`` that reports every test metric per category, their mean and the pooled value.

    Args:
        metrics: Test metrics by name, from ``image_AUROC``, ``image_AP``, ``image_F1Max``, ``pixel_AUROC``,
            ``pixel_AP``, ``pixel_F1Max``, ``AUPRO``.
        val_metrics: Validation metrics by name, computed as the test ones (per category, on raw scores) and logged
            as their mean over the categories under the plain names (``image_AUROC``), so that checkpoint selection
            or early stopping on them follows the papers' number. Default image and pixel AUROC.
        output_dir: Where the CSV/JSON go; default the trainer's log directory (or ``default_root_dir``).
        compute_on_cpu: As anomalib's ``Evaluator``.
    """

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        val_metrics: Sequence[str] = ("image_AUROC", "pixel_AUROC"),
        output_dir: str | Path | None = None,
        compute_on_cpu: bool = True,
    ) -> None:
        check_metric_names([*metrics, *val_metrics])
        super().__init__(val_metrics=None, test_metrics=None, compute_on_cpu=compute_on_cpu)
        self.metric_names = list(metrics)
        self.val_metric_names = list(val_metrics)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._records: list[dict[str, Any]] = []
        self._val_records: list[dict[str, Any]] = []
        self.table = CategoryTable()

    @property
    def results(self) -> dict[str, dict[str, float]]:
        """The last test table: ``{category: {metric: value}, ..., "mean": ..., "pooled": ...}`` (NaN: undefined)."""
        return self.table.results

    @property
    def notes(self) -> dict[str, str]:
        """Why a row has undefined values, over how many categories a mean runs."""
        return self.table.notes

    @property
    def counted(self) -> dict[str, dict[str, int]]:
        """Categories behind each mean, per metric."""
        return self.table.counted

    def reset(self) -> None:
        """Forget what was accumulated."""
        self._records = []

    def update(self, batch: Any) -> None:
        """Keep one batch's raw ``pred_score``/``gt_label``/``anomaly_map``/``gt_mask``, category and class.

        Must see the batch before a post-processor normalises it (:meth:`setup` puts the evaluator first). The
        values are kept and every metric computed once at the end, per category.
        """
        record = batch_record(batch)
        if record is not None:
            self._records.append(record)

    def compute(self, post_processor: Any = None) -> dict[str, dict[str, float]]:
        """The per-category table of what was accumulated (see :func:`category_table`)."""
        self.table = category_table(self._records, self.metric_names, post_processor)
        return self.table.results

    # --- Lightning hooks ---------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Anomalib's set-up, then make sure this evaluator sees each test batch before any post-processor does."""
        super().setup(trainer, pl_module, stage)
        callbacks = getattr(trainer, "callbacks", None)
        if not isinstance(callbacks, list) or self not in callbacks:
            return
        position = callbacks.index(self)
        first_post = next((i for i, c in enumerate(callbacks[:position]) if hasattr(c, "post_process_batch")), None)
        if first_post is not None:
            callbacks.remove(self)
            callbacks.insert(first_post, self)
            logger.debug("PerCategoryEvaluator moved before the post-processor: metrics read the raw scores.")

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a fresh collection of validation outputs."""
        del trainer, pl_module
        self._val_records = []

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Keep the batch's raw validation outputs."""
        del trainer, pl_module, args, kwargs
        record = batch_record(outputs if outputs is not None else batch)
        if record is not None:
            self._val_records.append(record)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log each validation metric's mean over the categories (the same on every rank)."""
        del trainer
        if not self.val_metric_names:
            return
        records = gather_records(self._val_records)
        self._val_records = []
        means = None
        if records is not None:
            means = category_table(records, self.val_metric_names, pooled=False).results.get("mean")
        means = broadcast(means)
        for name, value in (means or {}).items():
            if not math.isnan(value):
                pl_module.log(name, value, sync_dist=True)  # the same value on every rank: the mean is that value

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
        records = gather_records(self._records)
        post_processor = getattr(pl_module, "post_processor", None)
        table = category_table(records, self.metric_names, post_processor) if records is not None else None
        pooled_values = table.pooled_values if table is not None else {}
        if table is not None:
            table.pooled_values = {}  # the other ranks need the rows only
        self.table = broadcast(table)
        self.table.pooled_values = pooled_values
        self._records = []
        results = self.table.results
        names = [m for m in self.metric_names if any(not math.isnan(v[m]) for v in results.values())]
        for row, values in results.items():
            for name in names:
                if not math.isnan(values[name]):
                    pl_module.log(
                        f"{name}/{row}", values[name], sync_dist=True
                    )  # the same value on every rank: the mean is that value
        for name in names:  # plain anomalib names = the mean over categories (the papers' number)
            if not math.isnan(results["mean"][name]):
                pl_module.log(
                    name, results["mean"][name], sync_dist=True
                )  # the same value on every rank: the mean is that value
        # on every rank: Lightning's ``trainer.log_dir`` is a collective (a broadcast from rank 0)
        self._report(self._directory(trainer), names)

    @rank_zero_only
    def _report(self, directory: Path | None, names: list[str]) -> None:
        show(f"\n{format_report(self.results, names, self.notes)}\n")
        if directory is not None:
            self.write(directory)
            report_after_test(directory)  # report.html; a failure only warns (pictures are saved at batch end)

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
