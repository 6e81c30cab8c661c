"""Reading images of every bit depth and mode with their full range.

anomalib's ``read_image`` does ``Image.open(path).convert("RGB")``: Pillow converts a 16-bit grayscale image
(``I;16``, what industrial cameras write) by clipping every value above 255, so a 16-bit picture becomes a white
one and its defects vanish. Here each mode is scaled by its own range: 8-bit modes (``L``, ``P``, ``LA``, ``RGBA``,
``CMYK``, ``YCbCr``, ...) through Pillow's RGB conversion, ``I;16*`` by 65535, ``I`` (32-bit integers, what Pillow
makes of many 16-bit files) by the smallest of 255, 65535 and 2^32 - 1 that holds its values, ``F`` (floats) by the
smallest of 1, 255 and 65535. Grayscale is repeated over three channels.

A file over Pillow's decompression-bomb limit is named with how to raise the limit
(``ANOMALIB_MULTICLASS_MAX_IMAGE_PIXELS``: a number of pixels, or 0 for none).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MAX_PIXELS_VARIABLE = "ANOMALIB_MULTICLASS_MAX_IMAGE_PIXELS"
_SIXTEEN_BIT = 65535.0


class ImageTooLargeError(ValueError):
    """An image has more pixels than Pillow's decompression-bomb limit allows."""


def _apply_pixel_limit() -> None:
    """Take the decompression-bomb limit from :data:`MAX_PIXELS_VARIABLE` when it is set."""
    value = os.environ.get(MAX_PIXELS_VARIABLE)
    if value is not None and value.strip():
        Image.MAX_IMAGE_PIXELS = int(value) or None


def open_image(path: str | Path) -> Image.Image:
    """``Image.open`` (header only) whose decompression-bomb error names the file and how to raise the limit."""
    _apply_pixel_limit()
    try:
        return Image.open(path)
    except Image.DecompressionBombError as error:
        msg = (
            f"{path} is larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels ({error}). "
            f"If you trust the file, raise the limit: {MAX_PIXELS_VARIABLE}=<pixels> (0: no limit) in the "
            "environment, or PIL.Image.MAX_IMAGE_PIXELS = None in Python."
        )
        raise ImageTooLargeError(msg) from error


def _scale_of(array: np.ndarray, mode: str) -> float:
    if mode.startswith("I;16"):
        return _SIXTEEN_BIT
    top = float(array.max()) if array.size else 0.0
    scales = (255.0, _SIXTEEN_BIT, float(2**32 - 1)) if mode == "I" else (1.0, 255.0, _SIXTEEN_BIT)
    return next((scale for scale in scales if top <= scale), top)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """``image`` as an ``H x W x 3`` float32 array in [0, 1], each mode scaled by its own range."""
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image).astype(np.float64)
        if array.ndim == 3:  # a multi-channel high-bit-depth image Pillow holds as one plane per band
            array = array[..., :3]
        gray = np.clip(array / _scale_of(array, image.mode), 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=-1) if gray.ndim == 2 else gray
    # times 1/255 in float32, as torchvision's ``to_dtype(scale=True)`` in anomalib's ``read_image``: bit-for-bit the
    # input anomalib gives its own models (dividing by 255 differs in the last bit for a third of the values)
    return np.asarray(image.convert("RGB"), dtype=np.float32) * np.float32(1 / 255)


def read_rgb(path: str | Path, as_tensor: bool = True) -> torch.Tensor | np.ndarray:
    """The image at ``path`` in [0, 1]: a ``3 x H x W`` float tensor, or an ``H x W x 3`` array (``as_tensor=False``).

    The drop-in for anomalib's ``read_image`` (same arguments, same output) that keeps 16-bit and float images.
    """
    with open_image(path) as image:
        image.load()
        array = to_rgb_array(image)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))) if as_tensor else array


def as_rgb_array(image: np.ndarray, what: str = "the image") -> np.ndarray:
    """A numpy image as ``[N x] H x W x 3`` (or ``N x 3 x H x W``) float32 in [0, 1], from any common layout.

    2-D arrays are grayscale (repeated over three channels), ``H x W x 1`` too; integer arrays are scaled by their
    type's range (uint8 by 255, uint16 by 65535), float arrays are taken as [0, 1].
    """
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    else:
        array = array.astype(np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim not in (3, 4) or 3 not in (array.shape[-1], array.shape[-3]):
        msg = (
            f"Cannot read {what}: an array of shape {np.shape(image)}. Pass H x W (grayscale), H x W x 3 (RGB), "
            "N x H x W x 3 or N x 3 x H x W."
        )
        raise ValueError(msg)
    return array
