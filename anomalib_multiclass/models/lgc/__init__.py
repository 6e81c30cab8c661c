"""LGC: class-aware local and global contrastive learning for multi-class reconstruction AD (arXiv 2412.04769)."""

from anomalib_multiclass.models.lgc.lightning_model import LGC, lgc_view_transform
from anomalib_multiclass.models.lgc.loss import LGCLoss, LocalContrastiveLoss, SupervisedContrastiveLoss
from anomalib_multiclass.models.lgc.torch_model import LGCModel, Projector, kmeans

__all__ = [
    "LGC",
    "LGCLoss",
    "LGCModel",
    "LocalContrastiveLoss",
    "Projector",
    "SupervisedContrastiveLoss",
    "kmeans",
    "lgc_view_transform",
]
