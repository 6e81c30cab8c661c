"""Class-aware post-processing: per-category thresholds and normalisation."""

from anomalib_multiclass.post_processing.class_aware import ClassAwarePostProcessor

__all__ = ["ClassAwarePostProcessor"]
