"""Omni-AD: global and local feature reconstruction with Omni-blocks (Quan et al., ICME 2025)."""

from anomalib_multiclass.models.omni_ad.blocks import OmniBlock
from anomalib_multiclass.models.omni_ad.lightning_model import OmniAD
from anomalib_multiclass.models.omni_ad.torch_model import OmniADModel

__all__ = ["OmniAD", "OmniADModel", "OmniBlock"]
