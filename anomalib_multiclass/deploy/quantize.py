"""INT8 OpenVINO models calibrated on images of every category (NNCF).

anomalib 2.7 calibrates on ``datamodule.val_dataloader()`` as it comes (NNCF takes up to 300 samples): with
several categories in one model nothing makes that set cover every category, and its accuracy-control path does
not run with NNCF 3 (its validation function returns one value where NNCF asks for a pair). Here calibration takes
the same number of images from every category (``images_per_category``, seeded), and accuracy control validates per
category: the quantity it guards is the mean over categories of a metric, and NNCF ranks the layers to restore
by how much each changes the model's outputs.

NNCF is an optional dependency: ``pip install "anomalib-multiclass[edge]"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule

logger = logging.getLogger(__name__)

DEFAULT_IMAGES_PER_CATEGORY = 32
CALIBRATION_SEED = 0
# softmax (attention) and MVN (layer / instance normalisation): NNCF's TRANSFORMER model type keeps them out of INT8
FLOAT_SENSITIVE_OPS = frozenset({"Softmax", "MVN"})


def require_nncf() -> Any:
    """``nncf``, or an error that says how to install it."""
    try:
        import nncf
    except ModuleNotFoundError as error:
        msg = (
            "INT8 export (INT8, INT8_PTQ, INT8_ACQ) needs NNCF: pip install 'anomalib-multiclass[edge]' "
            "(or pip install nncf)."
        )
        raise ModuleNotFoundError(msg) from error
    return nncf


def category_sample_indices(
    categories: Sequence[str], images_per_category: int, seed: int = CALIBRATION_SEED
) -> list[int]:
    """Up to ``images_per_category`` indices of each category (seeded draw), categories interleaved.

    ``categories`` gives the category of every sample. A category with fewer images gives all it has (said in
    a log line): every category is represented, none by more than its share.
    """
    if images_per_category < 1:
        msg = f"images_per_category must be at least 1, got {images_per_category}."
        raise ValueError(msg)
    generator = np.random.default_rng(seed)
    by_category: dict[str, list[int]] = {}
    for index, category in enumerate(categories):
        by_category.setdefault(str(category), []).append(index)
    chosen: list[list[int]] = []
    for category, indices in by_category.items():
        if len(indices) < images_per_category:
            logger.info(
                "Calibration: category %r has %d images, fewer than %d: all of them are used.",
                category,
                len(indices),
                images_per_category,
            )
        take = min(len(indices), images_per_category)
        chosen.append(sorted(generator.choice(indices, size=take, replace=False).tolist()))
    # round-robin over categories: a calibration subset cut short by NNCF still sees every category
    longest = max((len(c) for c in chosen), default=0)
    return [c[i] for i in range(longest) for c in chosen if i < len(c)]


def _dataset_categories(dataset: Any) -> list[str]:
    samples = getattr(dataset, "samples", None)
    if samples is not None and "category" in samples:
        return [str(c) for c in samples["category"]]
    logger.info("Calibration: the dataset has no category column; its images count as one category.")
    return ["all"] * len(dataset)


def _model_input_size(model: ov.Model) -> tuple[int, int] | None:
    """(H, W) of a model with a static spatial input, ``None`` if either side is dynamic."""
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or len(shape) != 4 or shape[2].is_dynamic or shape[3].is_dynamic:
        return None
    return int(shape[2].get_length()), int(shape[3].get_length())


def _as_input(image: torch.Tensor, size: tuple[int, int] | None) -> np.ndarray:
    """One image (3, H, W) in [0, 1] as a (1, 3, H, W) float32 model input, resized to a static input size."""
    batch = image.unsqueeze(0).float()
    if size is not None and tuple(batch.shape[-2:]) != size:
        batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
    return batch.numpy()


def _setup(datamodule: AnomalibDataModule | None, what: str) -> AnomalibDataModule:
    if datamodule is None:
        msg = f"{what} needs calibration images: pass `datamodule` (e.g. --data MultiClassFolder on the command line)."
        raise ValueError(msg)
    datamodule.setup("fit")
    return datamodule


def calibration_images(
    datamodule: AnomalibDataModule,
    images_per_category: int | None = None,
    input_size: tuple[int, int] | None = None,
    split: str = "train",
) -> list[np.ndarray]:
    """Calibration inputs: ``images_per_category`` images of every category of ``datamodule``'s ``split``.

    The training split is the default: normal images, present for every category, never the test images the
    model is evaluated on. ``images_per_category`` defaults to the datamodule's
    ``calibration_images_per_category`` (or :data:`DEFAULT_IMAGES_PER_CATEGORY`).
    """
    dataset = getattr(datamodule, f"{split}_data", None)
    if dataset is None or len(dataset) == 0:
        msg = f"Calibration: {type(datamodule).__name__} has no {split} images after setup."
        raise ValueError(msg)
    count = images_per_category or getattr(datamodule, "calibration_images_per_category", None)
    indices = category_sample_indices(_dataset_categories(dataset), count or DEFAULT_IMAGES_PER_CATEGORY)
    return [_as_input(dataset[i].image, input_size) for i in indices]


def _model_type(model: ov.Model) -> Any:
    """NNCF's TRANSFORMER model type for graphs with softmax or layer / instance normalisation.

    It keeps those operations (and the attention products of two activations) out of INT8 and quantizes
    activations asymmetrically (they take both signs after normalisation or a leaky ReLU).
    """
    import nncf

    sensitive = any(op.get_type_name() in FLOAT_SENSITIVE_OPS for op in model.get_ops())
    return nncf.ModelType.TRANSFORMER if sensitive else None


def anomaly_map_operations(model: ov.Model) -> list[str]:
    """Names of the operations on one-channel maps: the anomaly map's upsampling, smoothing and pooling.

    Left to NNCF, these get 8-bit input quantizers whose range is set on the (normal) calibration images, so a
    defect's larger distances are clipped to what normal images reach: the very signal the model exists for.
    They are a few cheap operations at the end of the graph; kept in floating point they cost nothing.
    """
    names = []
    for op in model.get_ops():
        if op.get_input_size() == 0:
            continue
        shape = op.input(0).get_partial_shape()
        if shape.rank.is_static and len(shape) == 4 and shape[1].is_static and shape[1].get_length() == 1:
            names.append(op.get_friendly_name())
    return names


def _constant_names(op: Any, depth: int = 4) -> set[str]:
    """Names of the constants feeding ``op`` (weights keep their parameter names through Convert/Reshape/...)."""
    names: set[str] = set()
    for index in range(op.get_input_size()):
        node = op.input_value(index).get_node()
        for _ in range(depth):
            if node.get_type_name() == "Constant":
                names |= {node.get_friendly_name(), *node.output(0).get_names()}
                break
            if node.get_input_size() != 1 and node.get_type_name() not in {"Multiply", "Subtract", "Reshape"}:
                break
            node = node.input_value(0).get_node()
    return names


def frozen_encoder_operations(model: ov.Model, frozen_parameters: Iterable[str]) -> list[str]:
    """Names of the frozen encoder's operations: those whose weights are ``frozen_parameters``, and all upstream.

    Export names the weight constants after the module's parameters. The frozen encoder runs first on the image,
    so every operation upstream of one of its weighted operations (its depthwise convolutions, whose folded weights
    lose their names, the input normalisation) belongs to it.
    """
    frozen = set(frozen_parameters)
    stack = [op for op in model.get_ops() if _constant_names(op) & frozen]
    seen: dict[str, Any] = {}
    while stack:
        op = stack.pop()
        if op.get_friendly_name() in seen:
            continue
        seen[op.get_friendly_name()] = op
        stack += [op.input_value(i).get_node() for i in range(op.get_input_size())]
    return [name for name, op in seen.items() if op.get_type_name() not in {"Constant", "Parameter"}]


COMPUTE_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"})


# the encoder's stem, kept in floating point by default: its first convolutions (EfficientNet: conv_stem and block 0's
# depthwise convolution). One was not enough: with only the first in float UniAD lost 1.3 points of image AUROC on a
# category of the validation proxy, with two 0.6 (README, "INT8 that pays")
STEM_CONVOLUTIONS = 2


def encoder_stem_operations(
    model: ov.Model, frozen_parameters: Iterable[str], convolutions: int = STEM_CONVOLUTIONS
) -> list[str]:
    """Names of the frozen encoder's stem: its first ``convolutions`` convolutions and all before the next one.

    That is the input normalisation, the convolutions on (and next to) the image, and their normalisation and
    activation. Of the encoder's layers these are the ones whose INT8 costs accuracy; the rest of the encoder goes
    INT8 at no measured cost and at most of the speed of a fully INT8 encoder.
    """
    if convolutions < 1:
        msg = f"stem_convolutions must be at least 1, got {convolutions} (float_encoder='none' quantizes the stem)."
        raise ValueError(msg)
    encoder = set(frozen_encoder_operations(model, frozen_parameters))
    stem: list[str] = []
    seen = 0
    for op in model.get_ordered_ops():
        if op.get_friendly_name() not in encoder:
            continue
        if op.get_type_name() in COMPUTE_OPS:
            seen += 1
            if seen > convolutions:
                break
        stem.append(op.get_friendly_name())
    return stem


def float_compute_operations(model: ov.Model) -> list[str]:
    """Names of the convolutions and matrix products whose activation input is not INT8 (no ``FakeQuantize``).

    These are the float islands of an INT8 graph: each runs in floating point and costs a dequantize (and often a
    layout reorder) on its way in and a requantize on its way out. Their number is what a test keeps from growing
    silently (issue 27): a change that leaves more layers in float shows up here before it shows up as lost speed.
    """
    names = []
    for op in model.get_ops():
        if op.get_type_name() not in COMPUTE_OPS:
            continue
        source = op.input_value(0).get_node()
        while source.get_type_name() in {"Reshape", "Transpose", "Convert"} and source.get_input_size() > 0:
            source = source.input_value(0).get_node()
        if source.get_type_name() != "FakeQuantize":
            names.append(op.get_friendly_name())
    return names


# the parts of the frozen encoder an INT8 export can keep in floating point: its stem (the default), all of it, none
FLOAT_ENCODER_PARTS = ("stem", "all", "none")


def quantization_settings(
    model: ov.Model,
    ignored_scope: Any = None,
    frozen_parameters: Iterable[str] | None = None,
    float_encoder: str = "stem",
    stem_convolutions: int = STEM_CONVOLUTIONS,
) -> dict[str, Any]:
    """The ``nncf.quantize`` arguments used for every model of the package, and why.

    - ``model_type=TRANSFORMER`` for graphs with softmax or layer / instance normalisation (every model here:
      attention in UniAD, MINT-AD, RLR and Omni-AD, LGC's instance-normalised projector): those operations and the
      attention products of two activations stay in floating point, activations are quantized asymmetrically;
    - the anomaly-map operations (:func:`anomaly_map_operations`) stay in floating point, plus ``ignored_scope``;
    - with ``frozen_parameters``, the frozen encoder stays in floating point: its stem only (its first
      ``stem_convolutions`` convolutions, :func:`encoder_stem_operations`, ``float_encoder="stem"``), all of it
      (:func:`frozen_encoder_operations`, ``"all"``) or none of it (``"none"``). Its features are what the learned
      part reconstructs, and the anomaly score is the small residual between the two, so 8-bit noise on the
      encoder's features lands directly in the score; measured, the stem's costs accuracy, the rest of the
      encoder's does not;
    - activations are quantized per tensor: NNCF otherwise puts per-channel quantizers in front of transposes
      in channels-last blocks (Omni-AD's), which OpenVINO's CPU plugin refuses to compile ("doesn't support non
      per-tensor quantization for axis: 2");
    - SmoothQuant is off: NNCF 3.4 fails on MINT-AD's prototype matmuls ("operands could not be broadcast").
    """
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        QuantizationParameters,
    )

    if float_encoder not in FLOAT_ENCODER_PARTS:
        msg = f"float_encoder must be one of {FLOAT_ENCODER_PARTS}, got {float_encoder!r}."
        raise ValueError(msg)
    names = anomaly_map_operations(model)
    if frozen_parameters is not None and float_encoder == "all":
        names += frozen_encoder_operations(model, frozen_parameters)
    elif frozen_parameters is not None and float_encoder == "stem":
        names += encoder_stem_operations(model, frozen_parameters, stem_convolutions)
    if ignored_scope is not None:
        names += list(ignored_scope.names)
        patterns, types, subgraphs = ignored_scope.patterns, ignored_scope.types, ignored_scope.subgraphs
    else:
        patterns, types, subgraphs = [], [], []
    return {
        "model_type": _model_type(model),
        "ignored_scope": nncf.IgnoredScope(
            names=names, patterns=patterns, types=types, subgraphs=subgraphs, validate=False
        ),
        "advanced_parameters": AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(per_channel=False),
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),
        ),
    }


def quantize_ptq(
    model: ov.Model,
    datamodule: AnomalibDataModule | None,
    images_per_category: int | None = None,
    ignored_scope: Any = None,
    frozen_parameters: Iterable[str] | None = None,
    float_encoder: str = "stem",
    stem_convolutions: int = STEM_CONVOLUTIONS,
    **nncf_kwargs: Any,
) -> ov.Model:
    """Post-training INT8 quantization with calibration images from every category.

    Args:
        model: The converted (fp32) OpenVINO model.
        datamodule: Where the calibration images come from (its training split).
        images_per_category: Calibration images per category (default: the datamodule's
            ``calibration_images_per_category``, else :data:`DEFAULT_IMAGES_PER_CATEGORY`).
        ignored_scope: ``nncf.IgnoredScope`` of further operations to keep in floating point.
        frozen_parameters: Names of the exported module's frozen parameters, which locate the frozen encoder
            (``None``: no encoder is known, all of it is quantized).
        float_encoder: Which part of that encoder stays in floating point: ``"stem"`` (its first
            ``stem_convolutions`` convolutions, :func:`encoder_stem_operations`), ``"all"`` or ``"none"``.
        stem_convolutions: How many convolutions the stem has.
        **nncf_kwargs: ``nncf.quantize`` arguments that replace :func:`quantization_settings`'s.
    """
    nncf = require_nncf()
    datamodule = _setup(datamodule, "INT8_PTQ")
    inputs = calibration_images(datamodule, images_per_category, _model_input_size(model))
    settings = quantization_settings(model, ignored_scope, frozen_parameters, float_encoder, stem_convolutions)
    settings |= nncf_kwargs
    logger.info("INT8_PTQ: calibrating on %d images (every category).", len(inputs))
    return nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs), **settings)
