"""Class-aware multi-category data: items and batches carry each image's category."""

from anomalib_multiclass.data.dataclasses import MultiClassImageBatch, MultiClassImageItem

__all__ = ["MultiClassImageBatch", "MultiClassImageItem"]
