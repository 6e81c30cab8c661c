"""Multi-class anomaly detection models, each a real anomalib ``AnomalibModule``.

Importing this module defines the classes, which is what lets anomalib find them by name
(``anomalib train --model UniAD``, ``get_model("uniad")``).
"""

from anomalib_multiclass.models.lgc import LGC
from anomalib_multiclass.models.mint_ad import MintAD
from anomalib_multiclass.models.omni_ad import OmniAD
from anomalib_multiclass.models.rlr import RLR
from anomalib_multiclass.models.uniad import UniAD

__all__ = ["LGC", "RLR", "MintAD", "OmniAD", "UniAD"]
