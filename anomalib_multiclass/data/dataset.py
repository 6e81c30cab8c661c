"""A dataset over several categories whose items carry their category and class index."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName, read_mask
from PIL import UnidentifiedImageError
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_multiclass.data.dataclasses import MultiClassImageBatch, MultiClassImageItem
from anomalib_multiclass.data.image import ImageTooLargeError, open_image, read_rgb

logger = logging.getLogger(__name__)


class CorruptImageError(RuntimeError):
    """An image or mask file could not be decoded."""


class MaskMismatchError(ValueError):
    """An anomalous image has no mask, or its mask has another size."""


def _read(path: str, reader: Callable, what: str) -> torch.Tensor:
    try:
        return reader(path, as_tensor=True)
    except FileNotFoundError as error:
        msg = f"The {what} file {path} does not exist. Restore it or remove it from the dataset."
        raise FileNotFoundError(msg) from error
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot read the {what} file {path} ({error}). Replace or delete the corrupt file."
        raise CorruptImageError(msg) from error


def verify_images(samples: pd.DataFrame, decode: bool = True) -> None:
    """Open every image (and mask) listed in ``samples`` up front; raise naming the first bad file.

    ``decode=False`` reads headers only (cheap: a zero-byte, truncated-header or over-limit file is found before
    training instead of after an epoch); ``decode=True`` (``verify=True``) decodes every pixel too. Also checks that
    each anomalous image has a mask of the same size.
    """
    for row in samples.itertuples():
        sizes = {}
        for path, what in ((row.image_path, "image"), (getattr(row, "mask_path", ""), "mask")):
            if not isinstance(path, str) or not path:
                continue
            try:
                with open_image(path) as handle:
                    sizes[what] = handle.size
                    if decode:
                        handle.load()
            except FileNotFoundError as error:
                msg = f"The {what} file {path} does not exist. Restore it or remove it from the dataset."
                raise FileNotFoundError(msg) from error
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
                if isinstance(error, ImageTooLargeError):
                    raise
                msg = f"Cannot read the {what} file {path} ({error}). Replace or delete the corrupt file."
                raise CorruptImageError(msg) from error
        mask_path = getattr(row, "mask_path", "")
        if row.label_index == LabelName.ABNORMAL and "mask" in sizes and sizes["image"] != sizes["mask"]:
            (width, height), (mask_width, mask_height) = sizes["image"], sizes["mask"]
            msg = (
                f"Image {row.image_path} is {width}x{height} but its mask {mask_path} is "
                f"{mask_width}x{mask_height}. Masks must have the size of their image."
            )
            raise MaskMismatchError(msg)


class MultiClassDataset(AnomalibDataset):
    """Samples of several categories in one dataset; items are :class:`MultiClassImageItem`.

    Args:
        samples: anomalib sample dataframe (``image_path``, ``mask_path``, ``label_index``, ``split``)
            with an extra ``category`` column.
        category_names: Ordered category names; the position of a name is its class index.
        task: Segmentation when masks are available for anomalous images, else classification.
        augmentations: Applied to image (and mask) as in anomalib.
        categories_without_masks: Categories (in a segmentation dataset) that have no ground-truth masks at all:
            their images get an all-zero placeholder mask and ``has_gt_mask=False``, so pixel metrics skip them.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        category_names: Sequence[str],
        task: TaskType = TaskType.SEGMENTATION,
        augmentations: Transform | None = None,
        categories_without_masks: Sequence[str] = (),
    ) -> None:
        super().__init__(augmentations=augmentations)
        self.category_names = list(category_names)
        self.categories_without_masks = frozenset(categories_without_masks)
        missing = [p for p in samples["image_path"] if not Path(p).exists()]
        if missing:
            msg = f"{len(missing)} image file(s) are missing, e.g. {missing[0]}. Restore them or fix the dataset root."
            raise FileNotFoundError(msg)
        unknown = sorted(set(samples["category"]) - set(self.category_names))
        if unknown:
            msg = f"Samples of categories {unknown} are not in category_names {self.category_names}."
            raise ValueError(msg)
        samples = samples.copy()
        samples.attrs["task"] = task
        self.samples = samples

    @property
    def collate_fn(self) -> Callable:
        """Batches are :class:`MultiClassImageBatch`."""
        return MultiClassImageBatch.collate

    def class_index_of(self, category: str) -> int:
        """Class index of ``category``."""
        return self.category_names.index(category)

    def __getitem__(self, index: int) -> MultiClassImageItem:
        """Load image (RGB), mask, category and class index of sample ``index``."""
        row = self.samples.iloc[index]
        image_path, label_index = row.image_path, int(row.label_index)
        mask_path = row.mask_path if isinstance(row.mask_path, str) else ""
        image = _read(image_path, read_rgb, "image")
        category = str(row.category)
        gt_mask, has_gt_mask = None, None
        if self.task == TaskType.SEGMENTATION:
            has_gt_mask = torch.tensor(category not in self.categories_without_masks)
            if label_index == LabelName.NORMAL or not has_gt_mask:
                gt_mask = Mask(torch.zeros(image.shape[-2:])).to(torch.uint8)
            elif label_index == LabelName.ABNORMAL:
                if not mask_path:
                    msg = (
                        f"Anomalous image {image_path} has no ground-truth mask. Add the mask, or build the "
                        "datamodule without masks (classification only)."
                    )
                    raise MaskMismatchError(msg)
                gt_mask = _read(mask_path, read_mask, "mask")
                if gt_mask.shape[-2:] != image.shape[-2:]:
                    msg = (
                        f"Image {image_path} is {tuple(image.shape[-2:])} but its mask {mask_path} is "
                        f"{tuple(gt_mask.shape[-2:])}. Masks must have the size of their image."
                    )
                    raise MaskMismatchError(msg)
        if self.augmentations:
            if gt_mask is None:
                image = self.augmentations(image)
            else:
                image, gt_mask = self.augmentations(image, gt_mask)
        gt_label = None if label_index == LabelName.UNKNOWN else torch.tensor(label_index)
        return MultiClassImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=gt_label,
            image_path=image_path,
            mask_path=mask_path,
            category=category,
            class_index=torch.tensor(self.class_index_of(category)),
            has_gt_mask=has_gt_mask,
        )
