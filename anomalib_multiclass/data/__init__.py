"""Class-aware multi-category data: items and batches carry each image's category and class index."""

from anomalib_multiclass.category_map import CategoryMismatchError, check_category_names
from anomalib_multiclass.data.dataclasses import MultiClassImageBatch, MultiClassImageItem, MultiClassInferenceBatch
from anomalib_multiclass.data.datamodule import EmptyCategoryError, MultiClassDataModule, UnknownCategoryError
from anomalib_multiclass.data.datamodules import (
    MixedMultiClassDataModule,
    MultiClassBTAD,
    MultiClassFolder,
    MultiClassMVTecAD,
    MultiClassRealIAD,
    MultiClassVisA,
)
from anomalib_multiclass.data.dataset import CorruptImageError, MaskMismatchError, MultiClassDataset, verify_images

__all__ = [
    "CategoryMismatchError",
    "MultiClassInferenceBatch",
    "CorruptImageError",
    "EmptyCategoryError",
    "MaskMismatchError",
    "MixedMultiClassDataModule",
    "MultiClassBTAD",
    "MultiClassDataModule",
    "MultiClassDataset",
    "MultiClassFolder",
    "MultiClassImageBatch",
    "MultiClassImageItem",
    "MultiClassMVTecAD",
    "MultiClassRealIAD",
    "MultiClassVisA",
    "UnknownCategoryError",
    "check_category_names",
    "verify_images",
]
