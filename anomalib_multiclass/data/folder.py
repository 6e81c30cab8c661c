"""Reading one category folder in the MVTec AD layout, in every image format anomalib's ``Folder`` reads.

anomalib's MVTec AD parser keeps ``.png`` files only, so a folder of JPEG photos loses its images without a
word. This reader takes the extensions anomalib's ``Folder`` dataset takes (torchvision's ``IMG_EXTENSIONS``:
png, jpg/jpeg, bmp, tif/tiff, ppm, pgm, webp; any case) and reports every file it leaves out, with the reason.

Layout of a category folder::

    train/good/**          normal training images
    test/good/**           normal test images
    test/<defect>/**       anomalous test images
    ground_truth/<defect>/**/<image stem>_mask.<any supported extension>   (optional; all or none per category)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from anomalib.data.utils import LabelName, Split
from torchvision.datasets.folder import IMG_EXTENSIONS

from anomalib_multiclass.data.dataset import MaskMismatchError

IMAGE_EXTENSIONS: tuple[str, ...] = tuple(sorted(IMG_EXTENSIONS))
COLUMNS = ["path", "split", "label", "image_path", "mask_path", "label_index"]
MASK_SUFFIX = "_mask"


@dataclass
class CategoryFiles:
    """What :func:`read_category_folder` found: sample tables and the files it will not use (with why)."""

    train: pd.DataFrame
    test: pd.DataFrame
    unused: list[tuple[Path, str]] = field(default_factory=list)


def is_image(path: Path) -> bool:
    """A file whose extension anomalib's ``Folder`` reads (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def _images(folder: Path, base: Path, unused: list[tuple[Path, str]]) -> list[Path]:
    """Image files under ``folder`` (recursively); every other file goes to ``unused`` with its reason."""
    images = []
    for path in _files(folder):
        if _hidden(path, base):
            unused.append((path, "hidden file or folder"))
        elif not is_image(path):
            unused.append((path, f"not an image format anomalib reads ({', '.join(IMAGE_EXTENSIONS)})"))
        else:
            images.append(path)
    return images


def _rows(folder: Path, split: Split, label: str, images: list[Path], masks: dict[Path, Path]) -> list[list]:
    index = LabelName.NORMAL if label == "good" else LabelName.ABNORMAL
    return [[str(folder), split.value, label, str(p), str(masks.get(p, "")), int(index)] for p in images]


def read_category_folder(folder: str | Path) -> CategoryFiles:
    """Train and test samples of one category folder (anomalib's sample-table columns) and the unused files.

    Raises:
        MaskMismatchError: ``ground_truth`` exists but an anomalous image has no mask, or has two.
    """
    folder = Path(folder)
    unused: list[tuple[Path, str]] = []
    for entry in sorted(folder.iterdir()):
        if entry.name not in {"train", "test", "ground_truth"}:
            unused.append((entry, "not part of the layout (train/, test/, ground_truth/)"))
    for path in _files(folder / "train"):
        if path.relative_to(folder / "train").parts[0] != "good":
            unused.append((path, "training uses train/good only (normal images)"))
    train_images = _images(folder / "train" / "good", folder, unused)
    train = pd.DataFrame(_rows(folder, Split.TRAIN, "good", train_images, {}), columns=COLUMNS)

    ground_truth = folder / "ground_truth"
    masks = _mask_index(ground_truth, folder, unused)
    rows: list[list] = []
    test_root = folder / "test"
    for path in _files(test_root) if test_root.is_dir() else []:
        if path.parent == test_root:
            unused.append((path, "test images go in test/good or test/<defect>, not in test/ itself"))
    for label_dir in sorted(p for p in test_root.iterdir() if p.is_dir()) if test_root.is_dir() else []:
        images = _images(label_dir, folder, unused)
        image_masks: dict[Path, Path] = {}
        if label_dir.name != "good" and ground_truth.is_dir():
            _refuse_shared_stems(images, ground_truth / label_dir.name)
            for image in images:
                key = (label_dir.name, *image.relative_to(label_dir).parent.parts, image.stem)
                found = masks.pop(key, [])
                if len(found) != 1:
                    expected = ground_truth.joinpath(*key[:-1]) / f"{image.stem}{MASK_SUFFIX}.png"
                    msg = (
                        f"Anomalous image {image} has no mask: expected {expected} (any image extension)."
                        if not found
                        else f"Anomalous image {image} has {len(found)} masks: {[str(m) for m in found]}. Keep one."
                    )
                    raise MaskMismatchError(msg)
                image_masks[image] = found[0]
        rows += _rows(folder, Split.TEST, label_dir.name, images, image_masks)
    for paths in masks.values():
        unused += [(path, "a mask without its anomalous image in test/<defect>") for path in paths]
    test = pd.DataFrame(rows, columns=COLUMNS)
    return CategoryFiles(train=train, test=test, unused=sorted(unused))


def _refuse_shared_stems(images: list[Path], masks_folder: Path) -> None:
    """Two images that differ only by extension (``000.jpg``, ``000.png``) would share the mask ``000_mask.png``."""
    seen: dict[Path, Path] = {}
    for image in images:
        other = seen.setdefault(image.with_suffix(""), image)
        if other != image:
            msg = (
                f"{other} and {image} have the same name {image.stem!r}: the mask {masks_folder / image.stem}"
                f"{MASK_SUFFIX}.png cannot tell them apart. Rename one of them (and its mask)."
            )
            raise MaskMismatchError(msg)


def _mask_index(ground_truth: Path, base: Path, unused: list[tuple[Path, str]]) -> dict[tuple[str, ...], list[Path]]:
    """Masks by (defect, sub-folders..., image stem); files that are no mask go to ``unused``."""
    index: dict[tuple[str, ...], list[Path]] = {}
    for path in _images(ground_truth, base, unused):
        relative = path.relative_to(ground_truth)
        if len(relative.parts) < 2 or not path.stem.endswith(MASK_SUFFIX):
            unused.append((path, f"masks are ground_truth/<defect>/<image stem>{MASK_SUFFIX}.<ext>"))
            continue
        key = (*relative.parent.parts, path.stem.removesuffix(MASK_SUFFIX))
        index.setdefault(key, []).append(path)
    return index
