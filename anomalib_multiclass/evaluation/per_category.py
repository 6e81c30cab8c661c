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

Memory does not grow with the number of test pixels: each batch is folded into fixed-size statistics per
category and dropped (``anomalib_multiclass.statistics``): image-level metrics are exact (one score per image is
kept), pixel-level ones come from dyadic histograms with an error bound computed from the data (1e-3 at most, or
a warning). About 3 MiB per category at the default ``num_bins``. Under DDP the statistics are summed across
processes (tensors, not maps), so the table is the same with any number of processes, and each rank computes it;
rank 0 prints and writes it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.metrics import Evaluator
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from anomalib_multiclass.evaluation.protocol import (
    DEFAULT_METRICS,
    METRICS,
    CategoryTable,
    category_table,
    check_metric_names,
)
from anomalib_multiclass.evaluation.table import (
    ALL_CATEGORY,
    dataset_of,
    format_report,
    is_summary_row,
    per_image_rows,
    write_results,
)
from anomalib_multiclass.report import PER_IMAGE_SCORES, report_after_test, write_per_image_scores
from anomalib_multiclass.statistics import DEFAULT_BINS, StreamingStatistics
from anomalib_multiclass.statistics.shared import batch_key, validation_statistics
from anomalib_multiclass.utils.console import show
from anomalib_multiclass.utils.distributed import real_samples

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_CATEGORY",
    "DEFAULT_METRICS",
    "METRICS",
    "PerCategoryEvaluator",
    "dataset_of",
    "is_summary_row",
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
        num_bins: Bins of each category's pixel-score histogram (memory ``24 * num_bins`` bytes per category; the
            pixel metrics' error bounds fall like ``1 / num_bins``).
        post_processor: Normalises the ``pooled`` row's scores; inside a Trainer, the model's post-processor.

    Example:
        >>> evaluator = PerCategoryEvaluator(metrics=["image_AUROC", "pixel_AUROC"])
        >>> for batch in batches:  # doctest: +SKIP
        ...     evaluator.update(batch)  # pred_score, gt_label, anomaly_map, gt_mask, category
        >>> evaluator.compute()["mean"]["image_AUROC"]  # doctest: +SKIP
    """

    skips_placeholder_masks = True  # its statistics honour the batches' has_gt_mask

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        val_metrics: Sequence[str] = ("image_AUROC", "pixel_AUROC"),
        output_dir: str | Path | None = None,
        compute_on_cpu: bool = True,
        num_bins: int = DEFAULT_BINS,
        post_processor: Any = None,
    ) -> None:
        check_metric_names([*metrics, *val_metrics])
        super().__init__(val_metrics=None, test_metrics=None, compute_on_cpu=compute_on_cpu)
        self.metric_names = list(metrics)
        self.val_metric_names = list(val_metrics)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.num_bins = num_bins
        self.post_processor = post_processor
        self.statistics = self._new_statistics()
        self._validation: StreamingStatistics | None = None
        self.table = CategoryTable()

    def _new_statistics(self) -> StreamingStatistics:
        return StreamingStatistics(self.num_bins, regions="AUPRO" in self.metric_names, keep_paths=True)

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
        self.statistics = self._new_statistics()

    def update(self, batch: Any) -> None:
        """Fold one batch's raw ``pred_score``/``gt_label``/``anomaly_map``/``gt_mask`` into the statistics.

        Must see the batch before a post-processor normalises it (:meth:`setup` puts the evaluator first); the
        batch is not kept.
        """
        self.statistics.update(batch, self._normaliser())

    def compute(self) -> dict[str, dict[str, float]]:
        """The per-category table of what was accumulated (summed over processes first)."""
        self.table = category_table(self.statistics.reduce(), self.metric_names)
        return self.table.results

    def _normaliser(self) -> Any:
        """``(scores, maps, classes) -> normalised (scores, maps)`` by the post-processor, for the pooled row."""
        post_processor = self.post_processor
        normalize = getattr(post_processor, "normalize_batch", None)
        if normalize is None or not getattr(post_processor, "enable_normalization", False):
            return None
        pixel = any(not name.startswith("image") for name in self.metric_names)

        def normalise(
            scores: torch.Tensor, maps: torch.Tensor | None, classes: torch.Tensor | None
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            batch = SimpleNamespace(
                pred_score=scores.float(), anomaly_map=maps.float() if maps is not None and pixel else None,
                class_index=classes, pred_class=None,
            )  # fmt: skip
            normalize(batch)
            return batch.pred_score, batch.anomaly_map

        return normalise

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
        """Join (or start) the pass's validation statistics, shared with a class-aware post-processor."""
        self._validation = None
        if self.val_metric_names:
            regions = "AUPRO" in self.val_metric_names
            self._validation = validation_statistics(trainer, pl_module, self.num_bins, regions)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Fold the batch's raw validation outputs in (once, whoever of the sharing callbacks comes first)."""
        del trainer, pl_module
        if self._validation is not None:
            self._validation.fold(outputs if outputs is not None else batch, batch_key((batch, *args), kwargs, outputs))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log each validation metric's mean over the categories (the same on every rank)."""
        del trainer
        if self._validation is None:
            return
        means = category_table(self._validation.reduce(), self.val_metric_names, pooled=False).results["mean"]
        self._validation = None
        for name, value in means.items():
            if not math.isnan(value):
                pl_module.log(name, value, sync_dist=True)  # the same value on every rank: the mean is that value

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from empty statistics; the model's post-processor normalises the pooled row."""
        self.reset()
        own = getattr(pl_module, "post_processor", None)
        self.post_processor = own if own is not None else self.post_processor
        self.statistics.sample_limit = real_samples(trainer, "test")

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Fold the batch's raw predictions in (this callback runs before the post-processor)."""
        del trainer, pl_module, batch_idx, dataloader_idx
        self.update(outputs if outputs is not None else batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Sum the statistics over ranks, compute the table on each, log everywhere, print and write on rank 0."""
        results = self.compute()
        names = [m for m in self.metric_names if any(not math.isnan(v[m]) for v in results.values())]
        for row, values in results.items():
            for name in names:
                if not math.isnan(values[name]):
                    pl_module.log(f"{name}/{row}", values[name], sync_dist=True)  # the same value on every rank
        for name in names:  # plain anomalib names = the mean over categories (the papers' number)
            if not math.isnan(results["mean"][name]):
                pl_module.log(name, results["mean"][name], sync_dist=True)
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
        """Write ``per_category_metrics.csv``/``.json`` and ``per_image_scores.csv`` into ``directory``.

        Undefined values are ``null``; the per-image file has each test image's raw and normalised score, label,
        decision and its category's raw threshold (what the HTML report plots).
        """
        directory = Path(directory)
        paths = write_results(directory, self.results, self.metric_names, self.notes, self.counted, self.table.bounds)
        write_per_image_scores(directory / PER_IMAGE_SCORES, per_image_rows(self.statistics, self.post_processor))
        return paths
