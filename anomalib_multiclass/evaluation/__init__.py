"""Per-category evaluation (metrics per category on raw scores, their mean, and pooled over all images)."""

from anomalib_multiclass.evaluation.per_category import DEFAULT_METRICS, PerCategoryEvaluator
from anomalib_multiclass.evaluation.table import format_table

__all__ = ["DEFAULT_METRICS", "PerCategoryEvaluator", "format_table"]
