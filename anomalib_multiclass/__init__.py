"""anomalib-multiclass: multi-class (unified) anomaly detection models and data for anomalib.

Importing this package is cheap: it does not import torch. The models live in
``anomalib_multiclass.models`` and the datamodules in ``anomalib_multiclass.data``.
"""

__version__ = "0.1.0"
