"""What the evaluator and the post-processor keep of a pass: fixed-size pixel statistics, one score per image.

Each batch is folded in and dropped. Per category: every image's raw score, label, normalised score and path
(image-level metrics and thresholds are exact), a :class:`DyadicHistogram` of its pixels (pixel metrics within a
computed bound, see ``binned.py``), the number of defect regions (AUPRO) and the exact smallest and largest pixel.
With a normaliser (the post-processor's), a ``pooled`` histogram of the normalised maps of all categories.
Memory: ``24 * num_bins`` bytes per category and for the pooled histogram (3 MiB each at the default), plus about
40 bytes and the path per image; nothing grows with the number of pixels.

Across processes (DDP) the histograms are summed (an all-reduce of tensors, after each rank moved them exactly to
the grid of the global range) and the per-image numbers all-gathered: every rank then holds the statistics of the
whole set, the same as one process would. Images the distributed sampler repeats to even out the last shard are
never folded in (``sample_limit``), so each image counts once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from anomalib_multiclass.statistics.binned import DEFAULT_BINS, DyadicHistogram, canonical_grid
from anomalib_multiclass.utils import distributed

logger = logging.getLogger(__name__)

ALL_CATEGORY = "all"
Normaliser = Callable[
    [torch.Tensor, torch.Tensor | None, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]
]


@dataclass
class CategoryStatistics:
    """One category's images: per-image numbers, a pixel histogram, defect regions, images without masks."""

    num_bins: int = DEFAULT_BINS
    class_index: int | None = None
    # one entry per image, as Python numbers: small objects live in Python's own arenas, not between the large
    # per-batch temporaries on the C heap (tiny tensors there pin freed pages, and RSS grows with every batch)
    scores: list[float] = field(default_factory=list)  # raw scores
    labels: list[int] = field(default_factory=list)  # 0, 1, or -1 (unknown)
    normalised: list[float] = field(default_factory=list)  # NaN without a normaliser
    paths: list[str] = field(default_factory=list)
    pixels: DyadicHistogram = field(init=False)
    regions: int = 0
    images_without_mask: int = 0
    images_with_mask: int = 0

    def __post_init__(self) -> None:
        self.pixels = DyadicHistogram(self.num_bins)

    def image_values(self) -> dict[str, torch.Tensor]:
        """``pred_score``, ``gt_label`` (where every image has one) and ``normalised_score`` as tensors."""
        values = {
            "pred_score": torch.tensor(self.scores, dtype=torch.float64),
            "normalised_score": torch.tensor(self.normalised, dtype=torch.float64),
        }
        if self.labels and min(self.labels) >= 0:
            values["gt_label"] = torch.tensor(self.labels, dtype=torch.long)
        return values

    @property
    def num_images(self) -> int:
        """Images folded in."""
        return len(self.scores)


class StreamingStatistics:
    """Per-category statistics of one pass, folded batch by batch (see the module docstring).

    Args:
        num_bins: Bins of each pixel histogram.
        regions: Label the defect regions of each mask (needed by AUPRO only; costs a connected-component pass).
        keep_paths: Keep each image's path (for the per-image scores file).
    """

    def __init__(self, num_bins: int = DEFAULT_BINS, regions: bool = True, keep_paths: bool = True) -> None:
        self.num_bins = num_bins
        self.regions = regions
        self.keep_paths = keep_paths
        self.categories: dict[str, CategoryStatistics] = {}
        self.pooled = DyadicHistogram(num_bins)  # normalised maps of every category (with a normaliser)
        self.pooled_regions = 0
        self.sample_limit: int | None = None  # images of this rank that are not the sampler's padding
        self.seen = 0
        self.reduced = False
        self._folded: set[Any] = set()

    def __iter__(self) -> Iterator[tuple[str, CategoryStatistics]]:
        return iter(sorted(self.categories.items()))

    # --- folding batches in ----------------------------------------------------------------------------------
    def fold(self, batch: Any, key: Any = None, normaliser: Normaliser | None = None) -> None:
        """:meth:`update` once per ``key`` (two callbacks sharing these statistics fold each batch once)."""
        if key is not None:
            if key in self._folded:
                return
            self._folded.add(key)
        self.update(batch, normaliser)

    def update(self, batch: Any, normaliser: Normaliser | None = None) -> None:
        """Fold in one batch's raw ``pred_score``/``gt_label``/``anomaly_map``/``gt_mask``, categories and classes.

        A batch without ``category`` is one category, ``all`` (one per ``class_index`` where it has those); without
        ``pred_score`` the score is the map's maximum, as anomalib's post-processor takes it.
        ``normaliser(scores, maps, classes)`` gives the normalised scores and maps the ``pooled`` row is computed on.
        """
        read = _read_batch(batch, self.sample_limit, self.seen)
        self.seen += read.size
        if read.keep == 0:
            return
        maps, masks, classes = read.maps, read.masks, read.classes
        weights, region_counts = (None, None) if masks is None or maps is None else self._region_weights(masks)
        normalised_scores = normalised_maps = None
        if normaliser is not None:
            normalised_scores, normalised_maps = normaliser(read.scores, maps, classes)
        pixels = None if maps is None or masks is None else (maps.numpy(), masks.numpy(), weights)
        for category in dict.fromkeys(read.categories):
            index = [i for i, c in enumerate(read.categories) if c == category]
            stats = self.categories.get(category)
            if stats is None:
                stats = self.categories[category] = CategoryStatistics(self.num_bins)
            if classes is not None and stats.class_index is None:
                stats.class_index = int(classes[index[0]])
            self._fold_images(stats, index, read.scores, read.labels, normalised_scores, read.paths)
            if maps is None:
                continue
            masked = [] if pixels is None else [i for i in index if read.has_mask is None or read.has_mask[i]]
            stats.images_without_mask += len(index) - len(masked)
            if not masked:
                continue
            stats.images_with_mask += len(masked)
            whole = len(masked) == read.keep  # one category in the batch, every mask real: no copy
            stats.pixels.add(*[part if whole or part is None else part[masked] for part in pixels])
            if region_counts is not None:
                stats.regions += int(region_counts[masked].sum())
        if normalised_maps is not None and masks is not None:
            real = list(range(read.keep)) if read.has_mask is None else read.has_mask.nonzero().flatten().tolist()
            whole = len(real) == read.keep
            if real:
                self.pooled.add(
                    *[part if whole or part is None else part[real] for part in (normalised_maps, masks, weights)]
                )
            if region_counts is not None:
                self.pooled_regions += int(region_counts[real].sum())

    def _fold_images(
        self,
        stats: CategoryStatistics,
        index: list[int],
        scores: torch.Tensor,
        labels: torch.Tensor | None,
        normalised: torch.Tensor | None,
        paths: list[str],
    ) -> None:
        """The per-image numbers of the batch's images at ``index``."""
        stats.scores.extend(scores[index].tolist())
        stats.labels.extend(labels[index].tolist() if labels is not None else [-1] * len(index))
        stats.normalised.extend(
            normalised.reshape(-1)[index].double().tolist() if normalised is not None else [math.nan] * len(index)
        )
        if self.keep_paths:
            stats.paths.extend(paths[i] for i in index)

    def _region_weights(self, masks: torch.Tensor) -> tuple[np.ndarray | None, torch.Tensor | None]:
        """Each defect pixel's ``1 / size of its connected region`` and each image's number of regions.

        Regions as anomalib's AUPRO finds them (OpenCV's connected components, 8-connectivity), one image at a time.
        """
        if not self.regions:
            return None, None
        import cv2

        weights = np.zeros(masks.shape, dtype=np.float32)  # summed into float64 bins
        counts = torch.zeros(len(masks), dtype=torch.long)
        for image in masks.flatten(1).any(dim=1).nonzero().flatten().tolist():
            regions, labels = cv2.connectedComponents(masks[image].numpy().astype(np.uint8), connectivity=8)
            sizes = np.bincount(labels.reshape(-1), minlength=regions).astype(np.float64)
            inverse = np.divide(1.0, sizes, out=np.zeros_like(sizes), where=sizes > 0)
            inverse[0] = 0.0  # background
            weights[image] = inverse[labels]
            counts[image] = regions - 1
        return weights, counts

    # --- across processes -------------------------------------------------------------------------------------
    def reduce(self) -> StreamingStatistics:
        """Every rank's statistics summed on every rank (once; a no-op in one process). Returns ``self``."""
        if self.reduced:
            return self
        self.reduced = True
        if not distributed.distributed():
            for stats in self.categories.values():
                stats.pixels.canonical()
            self.pooled.canonical()
            return self
        names = sorted(set().union(*distributed.all_gather_objects(sorted(self.categories))))
        for name in names:
            self.categories.setdefault(name, CategoryStatistics(self.num_bins))
        histograms = [self.categories[n].pixels for n in names] + [self.pooled]
        _sum_histograms(histograms)
        counters = torch.tensor(
            [[self.categories[n].regions, self.categories[n].images_with_mask, self.categories[n].images_without_mask,
              self.categories[n].class_index if self.categories[n].class_index is not None else -1] for n in names]
            + [[self.pooled_regions, 0, 0, -1]],
            dtype=torch.float64,
        )  # fmt: skip
        summed = distributed.all_reduce(counters[:, :3].clone(), "sum")
        known = distributed.all_reduce(counters[:, 3].clone(), "max")
        for row, name in enumerate(names):
            stats = self.categories[name]
            stats.regions, stats.images_with_mask, stats.images_without_mask = (int(v) for v in summed[row].tolist())
            stats.class_index = int(known[row]) if known[row] >= 0 else None
        self.pooled_regions = int(summed[-1, 0])
        self._gather_images(names)
        return self

    def _gather_images(self, names: list[str]) -> None:
        """Every rank's per-image numbers (and paths) on every rank."""
        rows = []
        for code, name in enumerate(names):
            stats = self.categories[name]
            values = [stats.scores, stats.labels, stats.normalised]
            rows.append(torch.tensor([[code] * len(stats.scores), *values], dtype=torch.float64).T.reshape(-1, 4))
        gathered = distributed.all_gather_rows(torch.cat(rows))
        paths = distributed.all_gather_objects([p for n in names for p in self.categories[n].paths])
        flat_paths = [p for part in paths for p in part]
        for code, name in enumerate(names):
            stats = self.categories[name]
            own = gathered[:, 0] == code
            stats.scores = gathered[own, 1].tolist()
            stats.labels = gathered[own, 2].long().tolist()
            stats.normalised = gathered[own, 3].tolist()
            if self.keep_paths:
                stats.paths = [flat_paths[i] for i in own.nonzero().flatten().tolist()]

    def merge(self, others: list[StreamingStatistics]) -> StreamingStatistics:
        """These statistics and ``others`` (disjoint categories, e.g. one model per category) as one set."""
        for other in others:
            for name, stats in other.categories.items():
                if name in self.categories:
                    msg = f"Category {name!r} is in two sets of statistics; merge sets of disjoint categories."
                    raise ValueError(msg)
                self.categories[name] = stats
        self.pooled = DyadicHistogram.merged([self.pooled, *(o.pooled for o in others)], self.num_bins)
        self.pooled_regions += sum(o.pooled_regions for o in others)
        return self

    def nbytes(self) -> int:
        """Bytes of tensor state held (histograms and per-image numbers), for memory checks."""
        total = 0 if self.pooled.counts is None else self.pooled.counts.nbytes
        for stats in self.categories.values():
            total += 0 if stats.pixels.counts is None else stats.pixels.counts.nbytes
            total += 8 * 3 * stats.num_images
        return total


class _Batch(NamedTuple):
    """One batch's fields on the CPU, cut to the images that are not the sampler's padding."""

    size: int
    keep: int
    scores: torch.Tensor
    maps: torch.Tensor | None
    masks: torch.Tensor | None
    labels: torch.Tensor | None
    classes: torch.Tensor | None
    categories: list[str]
    paths: list[str]
    has_mask: torch.Tensor | None  # False: the image's mask is a placeholder (its category has none)


def _read_batch(batch: Any, limit: int | None, seen: int) -> _Batch:
    """The batch's fields, checked: finite outputs, masks of the maps' size."""
    maps, scores = _tensor(batch, "anomaly_map"), _tensor(batch, "pred_score")
    size = len(scores) if scores is not None else len(maps) if maps is not None else 0
    keep = size if limit is None else max(0, min(size, limit - seen))
    if maps is not None:
        maps = maps[:keep].reshape(keep, *maps.shape[-2:])
        if maps.dtype not in (torch.float32, torch.float64):  # half precision: numpy reads float32
            maps = maps.float()
    if scores is not None:
        scores = scores.reshape(-1)[:keep].to(torch.float64)
    elif maps is not None:
        scores = maps.flatten(1).amax(dim=1).to(torch.float64)
    else:
        scores = torch.zeros(0, dtype=torch.float64)
    labels, masks, classes = (_tensor(batch, name) for name in ("gt_label", "gt_mask", "class_index"))
    labels = labels.reshape(-1)[:keep] if labels is not None else None
    classes = classes.reshape(-1)[:keep] if classes is not None else None
    categories = list(getattr(batch, "category", None) or [])[:keep]
    if not categories:  # a plain anomalib batch: one category, or one per class where classes are known
        categories = [str(c) for c in classes.tolist()] if classes is not None else [ALL_CATEGORY] * keep
    paths = getattr(batch, "image_path", None)
    paths = [str(p) for p in paths][:keep] if paths is not None else [""] * keep
    if keep:
        _check_finite(scores, maps, categories, paths)
    if masks is not None:
        masks = masks[:keep].reshape(keep, *masks.shape[-2:]) > 0
        if maps is not None and masks.shape != maps.shape:
            msg = (
                f"Anomaly maps of size {tuple(maps.shape[-2:])} and ground-truth masks of size "
                f"{tuple(masks.shape[-2:])} in one batch (first image {paths[0] or '?'}): pixel metrics need both "
                "at one size. Resize the masks with the images (the datamodule's transforms) or the maps."
            )
            raise ValueError(msg)
    has_mask = _tensor(batch, "has_gt_mask")
    has_mask = has_mask.reshape(-1)[:keep].bool() if has_mask is not None and masks is not None else None
    return _Batch(size, keep, scores, maps, masks, labels, classes, categories, paths, has_mask)


def _sum_histograms(histograms: list[DyadicHistogram]) -> None:
    """Each histogram summed over the processes, on every process, on the canonical grid of the global range."""
    bounds = torch.tensor([[h.low, -h.high] for h in histograms], dtype=torch.float64)
    bounds = distributed.all_reduce(bounds, "min")
    filled = []
    for histogram, (low, negative_high) in zip(histograms, bounds.tolist(), strict=True):
        if math.isinf(low):  # empty on every process
            continue
        exponent, start = canonical_grid(low, -negative_high, histogram.num_bins)
        if histogram.counts is None:
            histogram.counts = torch.zeros(3, histogram.num_bins, dtype=torch.float64)
            histogram.exponent, histogram.start = exponent, start
        else:
            histogram.regrid(exponent, start)
        # ties at the global extremes only: a process whose own smallest value is larger holds none of them
        histogram.ties[0] *= float(histogram.low == low)
        histogram.ties[1] *= float(histogram.high == -negative_high)
        histogram.low, histogram.high = low, -negative_high
        filled.append(histogram)
    if filled:
        summed = distributed.all_reduce(torch.stack([h.counts for h in filled]), "sum")
        ties = distributed.all_reduce(torch.stack([h.ties for h in filled]), "sum")
        for histogram, counts, tied in zip(filled, summed, ties, strict=True):
            histogram.counts, histogram.ties = counts.clone(), tied.clone()


def _tensor(batch: Any, name: str) -> torch.Tensor | None:
    value = getattr(batch, name, None)
    return value.detach().to("cpu") if isinstance(value, torch.Tensor) else None


def _check_finite(scores: torch.Tensor, maps: torch.Tensor | None, categories: list[str], paths: list[str]) -> None:
    """Refuse NaN or infinite outputs, naming the image: no metric or threshold means anything on them."""
    if bool(torch.isfinite(scores).all()) and (maps is None or bool(np.isfinite(maps.numpy()).all())):
        return
    bad = ~torch.isfinite(scores)
    if maps is not None:
        bad |= ~torch.isfinite(maps).flatten(1).all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        msg = (
            f"The model gave a NaN or infinite anomaly score or map for {int(bad.sum())} image(s), first "
            f"{paths[first] or 'an image without path'} (category {categories[first]!r}). Training has diverged or "
            "the input is broken: check the loss, lower the learning rate, or look at that image."
        )
        raise ValueError(msg)
