"""anomalib's ``PredictDataset`` (``anomalib predict --data <folder>``) that skips unreadable files by name.

anomalib's reads every file with ``Image.open(path).convert("RGB")``: one zero-byte or foreign file stopped the
whole run with an ``UnidentifiedImageError`` that named no file, and 16-bit images came out white. Here every file
is opened (headers) once when the dataset is built: unreadable ones are skipped with a warning that names each,
and images are read with their full range (:func:`anomalib_multiclass.data.image.read_rgb`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from anomalib.data import ImageItem, PredictDataset
from PIL import UnidentifiedImageError
from torchvision.transforms.v2 import Transform

from anomalib_multiclass.data.image import ImageTooLargeError, open_image, read_rgb

logger = logging.getLogger(__name__)


def unreadable_reason(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an image (``None``: its header reads)."""
    path = Path(path)
    if path.stat().st_size == 0:
        return "an empty (zero-byte) file"
    try:
        with open_image(path):
            return None
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"not a readable image ({error})"


class ReadablePredictDataset(PredictDataset):
    """``PredictDataset`` without the files that cannot be read (each named in a warning), full-range images."""

    def __init__(
        self, path: str | Path, transform: Transform | None = None, image_size: int | tuple[int, int] = (256, 256)
    ) -> None:
        super().__init__(path, transform=transform, image_size=image_size)
        readable = []
        for filename in self.image_filenames:
            reason = unreadable_reason(filename)
            if reason is None:
                readable.append(filename)
            else:
                logger.warning("Skipping %s: %s. Replace or delete it to have it predicted.", filename, reason)
        if not readable:
            msg = f"No readable image in {path}: every file was skipped (see the warnings above)."
            raise ValueError(msg)
        self.image_filenames = readable

    def __getitem__(self, index: int) -> ImageItem:
        """The image with its full range (16-bit included), then the dataset's transform."""
        filename = self.image_filenames[index]
        image = read_rgb(filename, as_tensor=True)
        if self.transform:
            image = self.transform(image)
        return ImageItem(image=image, image_path=str(filename))
