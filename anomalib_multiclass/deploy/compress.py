"""What ``to_openvino`` runs for each compression type: weight-only INT8, INT8_PTQ, INT8_ACQ (NNCF)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from anomalib.deploy.export import CompressionType

from anomalib_multiclass.deploy.accuracy_control import quantize_acq
from anomalib_multiclass.deploy.quantize import STEM_CONVOLUTIONS, quantize_ptq, require_nncf

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule
    from torchmetrics import Metric


def compress_openvino_model(
    model: ov.Model,
    compression_type: CompressionType | str | None,
    datamodule: AnomalibDataModule | None = None,
    metric: Metric | str | None = None,
    max_drop: float = 0.01,
    images_per_category: int | None = None,
    frozen_parameters: Iterable[str] | None = None,
    float_encoder: str = "stem",
    stem_convolutions: int = STEM_CONVOLUTIONS,
) -> ov.Model:
    """What ``to_openvino`` runs for ``INT8`` (weights only), ``INT8_PTQ`` and ``INT8_ACQ``.

    ``frozen_parameters`` (INT8_PTQ, INT8_ACQ) locate the frozen encoder; ``float_encoder`` says which part of it
    stays in floating point: ``"stem"`` (its first ``stem_convolutions`` convolutions), ``"all"`` or ``"none"``.
    """
    compression_type = CompressionType(compression_type) if compression_type is not None else None
    if compression_type in {None, CompressionType.FP16}:
        return model
    if isinstance(metric, str):
        metric = _metric_by_name(metric)
    if compression_type == CompressionType.INT8:
        return require_nncf().compress_weights(model)
    if compression_type == CompressionType.INT8_PTQ:
        return quantize_ptq(
            model,
            datamodule,
            images_per_category,
            frozen_parameters=frozen_parameters,
            float_encoder=float_encoder,
            stem_convolutions=stem_convolutions,
        )
    if compression_type == CompressionType.INT8_ACQ:
        return quantize_acq(
            model,
            datamodule,
            metric,
            max_drop,
            images_per_category,
            frozen_parameters=frozen_parameters,
            float_encoder=float_encoder,
            stem_convolutions=stem_convolutions,
        )
    msg = f"Unknown compression type {compression_type!r}: use one of {[c.name for c in CompressionType]}."
    raise ValueError(msg)


def _metric_by_name(name: str) -> Metric:
    """An anomalib image metric given by class name (``"AUROC"``, ``"F1Score"``, ...)."""
    import anomalib.metrics as metrics

    cls = getattr(metrics, name, None)
    if cls is None:
        msg = f"Unknown metric {name!r}: give an anomalib metric class name, e.g. 'AUROC' or 'F1Score'."
        raise ValueError(msg)
    field = "pred_label" if name == "F1Score" else "pred_score"
    return cls(fields=[field, "gt_label"])
