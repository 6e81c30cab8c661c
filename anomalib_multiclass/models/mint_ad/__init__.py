"""MINT-AD: multi-class implicit neural representations for unified anomaly detection (ECCV 2024)."""

from anomalib_multiclass.models.mint_ad.lightning_model import MintAD
from anomalib_multiclass.models.mint_ad.torch_model import ClassAwareINR, MintADModel, PromptMapper

__all__ = ["ClassAwareINR", "MintAD", "MintADModel", "PromptMapper"]
