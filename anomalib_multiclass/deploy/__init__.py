"""Inference on exported models with the category map and per-category thresholds that travel with them."""

from anomalib_multiclass.deploy.inferencer import (
    METADATA_FILE,
    MultiClassOpenVINOInferencer,
    MultiClassTorchInferencer,
    read_metadata,
)

__all__ = ["METADATA_FILE", "MultiClassOpenVINOInferencer", "MultiClassTorchInferencer", "read_metadata"]
