"""Streamed, fixed-size statistics of a validation or test pass, shared by the evaluator and the post-processor."""

from anomalib_multiclass.statistics.binned import DEFAULT_BINS, CurveSummary, DyadicHistogram, canonical_grid
from anomalib_multiclass.statistics.streaming import ALL_CATEGORY, CategoryStatistics, StreamingStatistics

__all__ = [
    "ALL_CATEGORY",
    "DEFAULT_BINS",
    "CategoryStatistics",
    "CurveSummary",
    "DyadicHistogram",
    "StreamingStatistics",
    "canonical_grid",
]
