"""UniAD: a unified model for multi-class anomaly detection (You et al., NeurIPS 2022)."""

from anomalib_multiclass.models.uniad.lightning_model import UniAD
from anomalib_multiclass.models.uniad.torch_model import UniADModel

__all__ = ["UniAD", "UniADModel"]
