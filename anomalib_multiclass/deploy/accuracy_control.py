"""INT8 quantization with accuracy control (anomalib's ``INT8_ACQ``), judged per category.

NNCF returns quantized layers to floating point until the guarded quantity is within ``max_drop`` of the fp32
model's; here that quantity is the mean over categories of a metric (default: image AUROC) on the validation
split, and the per-item values NNCF ranks layers by are the model's raw outputs. Calibration is
:mod:`anomalib_multiclass.deploy.quantize`'s, every category alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from anomalib_multiclass.deploy.quantize import (
    STEM_CONVOLUTIONS,
    _as_input,
    _dataset_categories,
    _model_input_size,
    _setup,
    calibration_images,
    quantization_settings,
    require_nncf,
)

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule
    from torchmetrics import Metric

logger = logging.getLogger(__name__)


def default_acq_metric() -> Metric:
    """Image AUROC on the exported scores (computed per category by :func:`per_category_validation`)."""
    from anomalib.metrics import AUROC

    return AUROC(fields=["pred_score", "gt_label"])


def _validation_items(datamodule: AnomalibDataModule, input_size: tuple[int, int] | None) -> list[dict[str, Any]]:
    dataset = getattr(datamodule, "val_data", None)
    if dataset is None or len(dataset) == 0:
        msg = f"INT8_ACQ: {type(datamodule).__name__} has no validation images after setup."
        raise ValueError(msg)
    categories = _dataset_categories(dataset)
    items = []
    for index in range(len(dataset)):
        item = dataset[index]
        mask = getattr(item, "gt_mask", None)
        if mask is not None and input_size is not None and tuple(mask.shape[-2:]) != input_size:
            mask = F.interpolate(mask[None, None].float(), size=input_size, mode="nearest")[0, 0] > 0.5
        items.append(
            {
                "image": _as_input(item.image, input_size),
                "gt_label": int(item.gt_label),
                "gt_mask": mask,
                "category": categories[index],
            }
        )
    return items


def per_category_validation(metric: Metric) -> Any:
    """An NNCF validation function: ``metric`` per category, its mean, and the outputs of every image.

    NNCF 3 expects ``(metric value, values for each item)``; the raw outputs as the per-item values make NNCF
    rank the quantized layers by how much each changes the model's maps and scores.
    """
    from anomalib.data import ImageBatch

    def validate(compiled: Any, items: Iterable[dict[str, Any]]) -> tuple[float, list[list[np.ndarray]]]:
        outputs_per_item: list[list[np.ndarray]] = []
        per_category: dict[str, list[tuple[dict[str, Any], dict[str, np.ndarray]]]] = {}
        for item in items:
            result = compiled(item["image"])
            outputs = {port.get_any_name(): value for port, value in result.items()}
            outputs_per_item.append(list(outputs.values()))
            per_category.setdefault(item["category"], []).append((item, outputs))
        values = []
        for pairs in per_category.values():
            labels = torch.tensor([item["gt_label"] for item, _ in pairs])
            if labels.unique().numel() < 2:
                continue  # a ranking metric needs normal and anomalous images
            batch = {
                "image": torch.from_numpy(np.concatenate([item["image"] for item, _ in pairs])),
                "gt_label": labels,
                "pred_score": torch.from_numpy(np.concatenate([o["pred_score"].reshape(-1) for _, o in pairs])),
            }
            if "pred_label" in pairs[0][1]:
                batch["pred_label"] = torch.from_numpy(
                    np.concatenate([o["pred_label"].reshape(-1) for _, o in pairs])
                ).bool()
            if "anomaly_map" in pairs[0][1]:
                batch["anomaly_map"] = torch.from_numpy(np.concatenate([o["anomaly_map"] for _, o in pairs]))
            if all(item["gt_mask"] is not None for item, _ in pairs):
                batch["gt_mask"] = torch.stack([torch.as_tensor(item["gt_mask"]) for item, _ in pairs]).bool()
            metric.reset()
            metric.update(ImageBatch(**batch))
            values.append(float(metric.compute()))
        value = float(np.mean(values)) if values else math.nan
        return value, outputs_per_item

    return validate


def quantize_acq(
    model: ov.Model,
    datamodule: AnomalibDataModule | None,
    metric: Metric | None = None,
    max_drop: float = 0.01,
    images_per_category: int | None = None,
    ignored_scope: Any = None,
    frozen_parameters: Iterable[str] | None = None,
    float_encoder: str = "stem",
    stem_convolutions: int = STEM_CONVOLUTIONS,
    **nncf_kwargs: Any,
) -> ov.Model:
    """INT8 quantization with accuracy control, judged per category.

    Quantized layers return to floating point until the mean over categories of ``metric`` (default: image
    AUROC) on the validation split is within ``max_drop`` of the fp32 model's.
    """
    nncf = require_nncf()
    if not 0 <= max_drop <= 1:
        msg = f"max_drop must be between 0 and 1, got {max_drop}."
        raise ValueError(msg)
    datamodule = _setup(datamodule, "INT8_ACQ")
    size = _model_input_size(model)
    inputs = calibration_images(datamodule, images_per_category, size)
    validation = _validation_items(datamodule, size)
    settings = quantization_settings(model, ignored_scope, frozen_parameters, float_encoder, stem_convolutions)
    settings["advanced_quantization_parameters"] = settings.pop("advanced_parameters")
    settings |= nncf_kwargs
    logger.info("INT8_ACQ: calibrating on %d images, validating on %d.", len(inputs), len(validation))
    return nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(inputs),
        nncf.Dataset(validation),
        per_category_validation(metric if metric is not None else default_acq_metric()),
        max_drop=max_drop,
        subset_size=len(inputs),
        **settings,
    )
