"""RLR: learning a unified reference representation for multi-class anomaly detection (ECCV 2024)."""

from anomalib_multiclass.models.rlr.lightning_model import RLR
from anomalib_multiclass.models.rlr.torch_model import RLRModel

__all__ = ["RLR", "RLRModel"]
