"""Pixel scores on a dyadic grid: a fixed-size histogram that any number of pixels folds into, exactly mergeable.

Why not a library: ``adeval`` (the ADer benchmark's evaluator) and torchmetrics' binned curves both need the score
range before the first pixel arrives, and raw anomaly maps have none (a reconstruction error can be 0.3 in one
category and 300 in another, and the test set may go beyond what validation saw); adeval also bins on 1,000 strips
(about 1e-3 of the range, not of the curve) and loops over images in Python. So the grid here follows the data.

The grid: bin ``i`` holds the values in ``[(start + i) * 2**exponent, (start + i + 1) * 2**exponent)``. Its
``exponent`` is the smallest whose ``num_bins`` bins span every value seen so far (see :func:`canonical_grid`),
``start`` the bin of the smallest value. When a batch goes past the window, the grid widens by powers of two:
each old bin falls whole into one new bin (``absolute index >> k``), so no count is ever split or estimated.
Hence the final histogram depends only on the smallest and largest value seen, never on the order of the batches
nor on how they were split across processes: DDP ranks bring their histograms to the grid of the global range,
again exactly, and add them. One histogram is ``3 x num_bins`` float64 (3 MiB at the default 2**17 bins) whatever
the number of pixels; counts are exact integers in float64 up to 2**53 pixels.

The error bound: every pixel metric is computed at the bin edges, which is exact for every pair of pixels in
different bins; only the order *within* a bin is unknown. For each metric that unknown order bounds the error,
and :class:`CurveSummary` reports the bound computed from the histogram itself:

- AUROC counts a positive and a negative in the same bin as half a pair (the trapezoid): the error is at most
  ``sum_b p_b n_b / (2 P N)``;
- AP (step-wise, as sklearn and anomalib) lies between its values with each bin's positives first and last
  (closed forms with the digamma function): the bound is that interval's width;
- F1-max at the bin edges is at most the best F1 inside a bin, ``2 tp_b / (tp_b + fp_(b+1) + P)``;
- AUPRO (anomalib's: per-region overlap against the global FPR up to 0.3, trapezoid, normalised) crosses each bin
  on a monotone path between the bin's corners: the error is at most ``sum_b dFPR_b dPRO_b / 2 / 0.3``.

With values spread over ``m`` of the bins these bounds fall like ``1/m``; the range is at least half-filled, so
``m`` is at least ``num_bins / 2`` for a continuous map. The evaluator logs a warning for any bound above 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_BINS = 2**17
FPR_LIMIT = 0.3  # anomalib's AUPRO default
NEGATIVE, POSITIVE, REGION_WEIGHT = 0, 1, 2
_MANTISSA_BITS = 52  # finer bins than float64 can tell apart mean nothing: the exponent floor


def _fits(low: float, high: float, exponent: int, num_bins: int) -> bool:
    scale = 2.0**-exponent
    return math.floor(high * scale) - math.floor(low * scale) < num_bins


def canonical_grid(low: float, high: float, num_bins: int) -> tuple[int, int]:
    """``(exponent, start)`` of the finest dyadic grid whose ``num_bins`` bins hold ``[low, high]``.

    Finest but not below ``2**-52`` of the largest magnitude (so bin indices stay exact in float64 and int64).
    """
    magnitude = max(abs(low), abs(high)) or 1.0
    floor = math.frexp(magnitude)[1] - _MANTISSA_BITS
    span = high - low
    exponent = max(floor, math.ceil(math.log2(span / (num_bins - 1))) if span > 0 else floor)
    while not _fits(low, high, exponent, num_bins):
        exponent += 1
    while exponent - 1 >= floor and _fits(low, high, exponent - 1, num_bins):
        exponent -= 1
    return exponent, math.floor(low * 2.0**-exponent)


class DyadicHistogram:
    """Negative and positive pixel counts and per-region weights (AUPRO) on a dyadic grid (module docstring).

    Args:
        num_bins: Bins of the grid; memory is ``24 * num_bins`` bytes, the error bounds fall like ``1/num_bins``.
    """

    def __init__(self, num_bins: int = DEFAULT_BINS) -> None:
        if num_bins < 16:
            msg = f"num_bins must be at least 16, got {num_bins}."
            raise ValueError(msg)
        self.num_bins = num_bins
        self.counts: torch.Tensor | None = None  # (3, num_bins) float64: negatives, positives, region weights
        self.exponent = 0
        self.start = 0
        self.low = math.inf  # exact smallest and largest value seen
        self.high = -math.inf
        # negatives, positives and region weights of the values exactly equal to ``low`` (row 0) and ``high``
        # (row 1): clamped maps tie there, and exact ties are not binning error
        self.ties = torch.zeros(2, 3, dtype=torch.float64)

    @property
    def empty(self) -> bool:
        """True before the first value."""
        return self.counts is None

    @property
    def width(self) -> float:
        """The width of one bin."""
        return 2.0**self.exponent

    def add(
        self,
        values: torch.Tensor | np.ndarray,
        positive: torch.Tensor | np.ndarray,
        region_weight: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Fold in ``values`` (finite, any shape), their ground truth and (AUPRO) each pixel's ``1 / region size``.

        In the values' own float type: scaling by a power of two is exact, so ``floor`` gives the bin that float64
        arithmetic would; numpy's ``bincount`` is several times faster than torch's on the CPU.
        """
        array = _flat_array(values)
        if array.size == 0:
            return
        if array.dtype not in (np.float32, np.float64):
            array = array.astype(np.float32)
        truth = _flat_array(positive).astype(bool, copy=False)
        weights = _flat_array(region_weight) if region_weight is not None else None
        low, high = float(array.min()), float(array.max())
        self._count_ties(0, array == low, truth, weights, low < self.low, low == self.low)
        self._count_ties(1, array == high, truth, weights, high > self.high, high == self.high)
        self.regrid_to_hold(low, high)
        index = self._bin_index(array)
        index[truth] += self.num_bins  # positives count in the second half: one bincount for both
        counts = np.bincount(index, minlength=2 * self.num_bins)
        assert self.counts is not None
        self.counts[:2] += torch.from_numpy(counts.reshape(2, self.num_bins))
        if weights is not None:
            self.counts[REGION_WEIGHT] += torch.from_numpy(
                np.bincount(index[truth] - self.num_bins, weights[truth], minlength=self.num_bins)
            )

    def _count_ties(
        self,
        row: int,
        equal: np.ndarray,
        truth: np.ndarray,
        weights: np.ndarray | None,
        replaces: bool,
        adds: bool,
    ) -> None:
        """Count the batch's values equal to its extreme ``value`` where that is the new (or same) extreme."""
        if not (replaces or adds):
            return
        positives = equal & truth
        counts = [float(equal.sum() - positives.sum()), float(positives.sum()), 0.0]
        if weights is not None:
            counts[REGION_WEIGHT] = float(weights[positives].sum())
        tied = torch.tensor(counts, dtype=torch.float64)
        self.ties[row] = tied if replaces else self.ties[row] + tied

    def _bin_index(self, array: np.ndarray) -> np.ndarray:
        """Each value's bin (in place on one temporary: large batches allocate little)."""
        scaled = np.multiply(array, 2.0**-self.exponent, dtype=array.dtype)
        np.floor(scaled, out=scaled)
        scaled -= self.start
        index = scaled.astype(np.intp)
        del scaled
        if index.min() < 0 or index.max() >= self.num_bins:  # float32 underflow of a subnormal: redo in float64
            index = (np.floor(array.astype(np.float64) * 2.0**-self.exponent) - self.start).astype(np.intp)
        return index

    def regrid_to_hold(self, low: float, high: float) -> None:
        """Widen (exactly) to the canonical grid of everything seen plus ``[low, high]``, if the window is short."""
        low, high = min(low, self.low), max(high, self.high)
        if self.counts is not None and low == self.low and high == self.high:
            return
        exponent, start = canonical_grid(low, high, self.num_bins)
        if self.counts is None:
            self.counts = torch.zeros(3, self.num_bins, dtype=torch.float64)
            self.exponent, self.start = exponent, start
        elif exponent != self.exponent or not self._window_holds(low, high):
            self.regrid(exponent, start)
        self.low, self.high = low, high

    def _window_holds(self, low: float, high: float) -> bool:
        scale = 2.0**-self.exponent
        return math.floor(low * scale) >= self.start and math.floor(high * scale) < self.start + self.num_bins

    def regrid(self, exponent: int, start: int) -> None:
        """Move the counts to the grid ``(exponent, start)``, with ``exponent`` at least the current one."""
        if self.counts is None:
            self.exponent, self.start = exponent, start
            return
        if exponent < self.exponent:
            msg = f"A dyadic histogram only coarsens: exponent {exponent} < {self.exponent}."
            raise ValueError(msg)
        if exponent == self.exponent and start == self.start:
            return
        shift = exponent - self.exponent
        index = ((np.arange(self.num_bins, dtype=np.int64) + self.start) >> shift) - start  # floor division
        old = self.counts.numpy()
        occupied = old.any(axis=0)
        if (index[occupied] < 0).any() or (index[occupied] >= self.num_bins).any():
            msg = "Internal error: a dyadic regrid would drop counts outside the new window."
            raise RuntimeError(msg)
        moved = [np.bincount(index[occupied], old[row, occupied], minlength=self.num_bins) for row in range(3)]
        self.counts = torch.from_numpy(np.stack(moved))
        self.exponent, self.start = exponent, start

    def canonical(self) -> DyadicHistogram:
        """Itself on the canonical grid of its own range (what every merge and DDP reduction ends in)."""
        if self.counts is not None:
            self.regrid(*canonical_grid(self.low, self.high, self.num_bins))
        return self

    @classmethod
    def merged(cls, parts: list[DyadicHistogram], num_bins: int = DEFAULT_BINS) -> DyadicHistogram:
        """One histogram holding every part's counts, on the canonical grid of their joint range (exact)."""
        result = cls(num_bins)
        filled = [p for p in parts if not p.empty]
        if not filled:
            return result
        low, high = min(p.low for p in filled), max(p.high for p in filled)
        exponent, start = canonical_grid(low, high, num_bins)
        result.counts = torch.zeros(3, num_bins, dtype=torch.float64)
        result.exponent, result.start, result.low, result.high = exponent, start, low, high
        for part in filled:
            copy = cls(part.num_bins)
            assert part.counts is not None
            copy.counts, copy.exponent, copy.start = part.counts.clone(), part.exponent, part.start
            if part.num_bins != num_bins:
                msg = f"Cannot merge histograms of {part.num_bins} and {num_bins} bins."
                raise ValueError(msg)
            copy.regrid(exponent, start)
            result.counts += copy.counts
            result.ties[0] += part.ties[0] if part.low == low else 0.0
            result.ties[1] += part.ties[1] if part.high == high else 0.0
        return result

    def summary(self, regions: int = 0) -> CurveSummary:
        """The pixel metrics of the counts, each with its error bound."""
        assert self.counts is not None, "no values"
        counts = self.counts.numpy().copy()
        ties = self.ties.numpy()
        low_tie = ties[0]
        high_tie = ties[1] if self.high > self.low else np.zeros(3)  # one value: one tie
        counts[:, 0] -= low_tie  # the values equal to low sit in bin 0, those equal to high in the last filled bin
        counts[:, math.floor(self.high * 2.0**-self.exponent) - self.start] -= high_tie
        counts = np.maximum(counts, 0.0)  # float sums of region weights: no negative rounding residue
        entries = np.concatenate([low_tie[:, None], counts, high_tie[:, None]], axis=1)
        exact = np.zeros(entries.shape[1], dtype=bool)
        exact[[0, -1]] = True
        edges = np.concatenate([[self.low], (np.arange(self.num_bins) + self.start) * self.width, [self.high]])
        return CurveSummary(entries[NEGATIVE], entries[POSITIVE], entries[REGION_WEIGHT], regions, self, exact, edges)


@dataclass
class CurveSummary:
    """Pixel AUROC, AP, F1-max, AUPRO and the F1-optimal threshold from binned counts, with error bounds.

    The entries, in ascending score order, are the values tied at the smallest score, the bins, and the values
    tied at the largest score; ``exact`` marks the tie entries (one value each: no order hidden inside), ``edges``
    each entry's smallest value. numpy, one thread: a few passes over ``num_bins`` numbers each.
    """

    negatives: np.ndarray
    positives: np.ndarray
    region_weights: np.ndarray
    regions: int
    histogram: DyadicHistogram
    exact: np.ndarray
    edges: np.ndarray

    @property
    def num_positive(self) -> float:
        """Positive pixels."""
        return float(self.positives.sum())

    @property
    def num_negative(self) -> float:
        """Negative pixels."""
        return float(self.negatives.sum())

    def _above(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives when entry ``b`` and every entry above it are called anomalous."""
        return np.cumsum(self.positives[::-1])[::-1], np.cumsum(self.negatives[::-1])[::-1]

    def auroc(self) -> tuple[float, float]:
        """AUROC (a positive and a negative in one bin count half) and its bound."""
        pairs = self.num_positive * self.num_negative
        below = np.cumsum(self.negatives) - self.negatives
        value = float(np.dot(self.positives, below + self.negatives / 2)) / pairs
        hidden = np.where(self.exact, 0.0, self.positives * self.negatives)
        return value, float(hidden.sum()) / (2 * pairs)

    def average_precision(self) -> tuple[float, float]:
        """Step-wise AP with each bin one threshold (sklearn's ties), and the width of its exact interval."""
        filled = (self.positives + self.negatives) > 0
        positives, negatives = self.positives[filled][::-1], self.negatives[filled][::-1]  # descending scores
        exact = self.exact[filled][::-1]
        tp, fp = np.cumsum(positives), np.cumsum(negatives)
        total = self.num_positive
        step = positives * tp / (tp + fp)
        value = float(step.sum()) / total
        before_tp, before_called = tp - positives, tp + fp - positives - negatives
        best = _sum_of_precisions(before_tp, before_called, positives)  # the bin's positives first
        worst = _sum_of_precisions(before_tp, before_called + negatives, positives)  # its negatives first
        return value, float(np.where(exact, 0.0, best - worst).sum()) / total

    def f1_max(self) -> tuple[float, float, float]:
        """(F1-max at the bin edges, its bound, the F1-optimal threshold: the smallest value of the best entry)."""
        tp, fp = self._above()
        total = self.num_positive
        f1 = 2 * tp / (tp + fp + total)
        best = int(np.argmax(f1))
        next_fp = np.append(fp[1:], 0.0)
        inside = np.where(self.exact, f1, 2 * tp / (tp + next_fp + total))  # the best F1 within each entry
        return float(f1[best]), float(inside.max()) - float(f1[best]), max(float(self.edges[best]), self.histogram.low)

    def f1_threshold(self) -> float:
        """The F1-adaptive threshold on the binned pixels (anomalib's fallbacks without one of the classes)."""
        if self.num_positive == 0:
            return self.histogram.high
        if self.num_negative == 0:
            return self.histogram.low
        return self.f1_max()[2]

    def aupro(self, fpr_limit: float = FPR_LIMIT) -> tuple[float, float]:
        """AUPRO as anomalib computes it (area up to ``fpr_limit``, normalised by it) and its bound."""
        fpr = np.minimum(np.concatenate([[0.0], np.cumsum(self.negatives[::-1]) / self.num_negative]), 1.0)
        pro = np.minimum(np.concatenate([[0.0], np.cumsum(self.region_weights[::-1]) / self.regions]), 1.0)
        inside = int((fpr <= fpr_limit).sum())  # fpr is non-decreasing
        if inside < fpr.size and fpr[inside - 1] < fpr_limit:
            f1, f2, p1, p2 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
            limit_pro = p1 + (p2 - p1) * (fpr_limit - f1) / (f2 - f1)
            fpr = np.append(fpr[:inside], fpr_limit)
            pro = np.append(pro[:inside], limit_pro)
        else:
            fpr, pro = fpr[:inside], pro[:inside]
        end = float(fpr[-1])
        if end <= 0:
            return 0.0, 0.0
        d_fpr, d_pro = np.diff(fpr), np.diff(pro)
        area = float(np.dot(d_fpr, (pro[1:] + pro[:-1]) / 2))
        hidden = ~np.append(self.exact[::-1], False)[: d_fpr.size]  # segment k crosses entry k from the top
        return area / end, float(np.dot(d_fpr * hidden, d_pro)) / 2 / end


def _flat_array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A flat numpy view (or copy) of a CPU tensor or array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return values.reshape(-1)


def _sum_of_precisions(true_before: np.ndarray, called_before: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``sum_{i=1..count} (a + i) / (c + i)`` per bin, ``a`` true and ``c`` called positives before the bin.

    Equals ``count - (c - a) * (digamma(c + count + 1) - digamma(c + 1))``; bins with no false positive before
    (``c == a``) give ``count``.
    """
    from scipy.special import digamma

    gap = called_before - true_before
    harmonic = digamma(called_before + count + 1) - digamma(called_before + 1)
    return np.where(gap > 0, count - gap * harmonic, count)
