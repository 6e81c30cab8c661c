"""Image items and batches that carry the category of every image.

anomalib's :class:`~anomalib.data.dataclasses.torch.ImageItem` and ``ImageBatch`` have no class
label; multi-class models need one in training (class-aware losses) and evaluation needs one to
report per-category metrics. These subclasses add it without changing anything else, so every
anomalib component that accepts an ``ImageBatch`` accepts these too.
"""

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from anomalib.data.dataclasses.torch import ImageBatch, ImageItem


@dataclass
class MultiClassImageItem(ImageItem):
    """One image with its category name and the integer index of that category.

    ``pred_class`` is filled by models that predict the category. ``has_gt_mask`` is ``False`` for an image of a
    category without ground-truth masks in a dataset where other categories have them: its ``gt_mask`` is an
    all-zero placeholder (batches need one mask per image) that no pixel metric may read.
    """

    category: str | None = None
    class_index: torch.Tensor | None = None
    image_view: torch.Tensor | None = None  # the batch's field, per item (anomalib's batch iteration needs both)
    pred_class: torch.Tensor | None = None
    has_gt_mask: torch.Tensor | None = None


@dataclass
class MultiClassImageBatch(ImageBatch):
    """A batch of :class:`MultiClassImageItem`: ``category`` is a list, ``class_index`` shape ``(B,)``.

    ``image_view`` is a second, independently augmented view of the images, drawn by a model that trains on one
    (LGC, in training only). ``has_gt_mask`` (shape ``(B,)``, bool) marks the images whose ``gt_mask`` is real; where
    it is ``False`` the mask is a placeholder (a category without masks) and pixel metrics skip the image.
    """

    item_class: ClassVar[type[MultiClassImageItem]] = MultiClassImageItem

    category: list[str] | None = None
    class_index: torch.Tensor | None = None
    image_view: torch.Tensor | None = None
    pred_class: torch.Tensor | None = None
    has_gt_mask: torch.Tensor | None = None


class MultiClassInferenceBatch(NamedTuple):
    """``anomalib``'s ``InferenceBatch`` plus the predicted category index (models that predict it).

    Field order matches ``InferenceBatch`` so positional use stays compatible; ``pred_class`` is
    ``None`` for models without a classifier and then is not an export output.
    """

    pred_score: torch.Tensor | None = None
    pred_label: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None
    pred_mask: torch.Tensor | None = None
    pred_class: torch.Tensor | None = None


RAW_OUTPUTS = ("raw_pred_score", "raw_anomaly_map")


class ExportBatch(NamedTuple):
    """What an exported graph of a model without classifier outputs: anomalib's fields plus the raw outputs.

    anomalib's fields carry the global normalisation (the meaning anomalib's own inferencers document); the raw
    score and map let a deployment that knows the image's category normalise them once with that category's values.
    """

    pred_score: torch.Tensor
    pred_label: torch.Tensor | None
    anomaly_map: torch.Tensor | None
    pred_mask: torch.Tensor | None
    raw_pred_score: torch.Tensor
    raw_anomaly_map: torch.Tensor | None


class ClassExportBatch(NamedTuple):
    """:class:`ExportBatch` of a model that predicts the category: anomalib's fields use that predicted class."""

    pred_score: torch.Tensor
    pred_label: torch.Tensor | None
    anomaly_map: torch.Tensor | None
    pred_mask: torch.Tensor | None
    pred_class: torch.Tensor
    raw_pred_score: torch.Tensor
    raw_anomaly_map: torch.Tensor | None
