"""Small multi-category anomaly datasets built from real photographs, with synthetic defects.

Tests, the quickstart and the proxy benchmark need MVTec-like data that can be made offline. The photos and the
defect families (each with its pixel mask, at sizes from small to large) are described in
:mod:`anomalib_multiclass.data.synthetic_defects`; a second set of photos and defect shapes
(:data:`HELDOUT_CATEGORIES`, :data:`HELDOUT_DEFECT_TYPES`) serves as a test proxy used for no choice.

Everything is seeded: the same arguments give the same files.

Layouts:
- ``mvtec``: ``<root>/<cat>/train/good``, ``test/good``, ``test/<defect>``, ``ground_truth/<defect>/<name>_mask.png``
  (what anomalib's ``MVTecAD`` reads);
- ``visa``: the raw VisA layout that anomalib's ``Visa.prepare_data`` converts:
  ``<root>/<cat>/Data/Images/{Normal,Anomaly}``, ``<root>/<cat>/Data/Masks/Anomaly`` and
  ``<root>/split_csv/1cls.csv``;
- ``folder``: ``<root>/<cat>/{train/good, test/good, test/defect, ground_truth/defect}`` (one defect folder).

Command line: ``python -m anomalib_multiclass.data.synthetic --root datasets/synthetic --layout mvtec``.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_multiclass.data.synthetic_defects import (
    ALL_CATEGORIES,
    DEFECT_TYPES,
    DEFECTS,
    HELDOUT_CATEGORIES,
    HELDOUT_DEFECT_TYPES,
    PHOTO_CATEGORIES,
    _normal_image,
    _photo,
)

__all__ = [
    "ALL_CATEGORIES",
    "DEFAULT_CATEGORIES",
    "DEFECTS",
    "DEFECT_TYPES",
    "HELDOUT_CATEGORIES",
    "HELDOUT_DEFECT_TYPES",
    "LAYOUTS",
    "PHOTO_CATEGORIES",
    "make_synthetic_dataset",
]

DEFAULT_CATEGORIES = ("brick", "grass", "coffee")
LAYOUTS = ("mvtec", "visa", "folder")


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def make_synthetic_dataset(
    root: str | Path,
    layout: str = "mvtec",
    categories: Sequence[str] | None = None,
    n_train: int = 12,
    n_test_good: int = 4,
    n_test_defect: int = 6,
    image_size: int = 96,
    defect_types: Sequence[str] = DEFECT_TYPES,
    seed: int = 0,
) -> Path:
    """Write a small multi-category dataset with synthetic defects and return its root.

    Args:
        root: Folder to write into (created).
        layout: ``"mvtec"``, ``"visa"`` or ``"folder"`` (see the module docstring).
        categories: Photo categories; default ``brick``, ``grass``, ``coffee`` (two textures, one object).
        n_train: Normal training images per category.
        n_test_good: Normal test images per category.
        n_test_defect: Defective test images per category, cycling through ``defect_types`` and severities.
        image_size: Side of the square images in pixels.
        defect_types: Defect families to use.
        seed: Random seed; the same arguments give the same files.
    """
    if layout not in LAYOUTS:
        msg = f"Unknown layout {layout!r}. Use one of {LAYOUTS}."
        raise ValueError(msg)
    categories = list(categories or DEFAULT_CATEGORIES)
    unknown = [c for c in categories if c not in PHOTO_CATEGORIES]
    if unknown:
        msg = f"Unknown categories {unknown}. Available: {list(PHOTO_CATEGORIES)}."
        raise ValueError(msg)
    bad_defects = [d for d in defect_types if d not in DEFECTS]
    if bad_defects:
        msg = f"Unknown defect types {bad_defects}. Available: {list(DEFECTS)}."
        raise ValueError(msg)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    split_rows: list[list[str]] = []
    for cat_index, category in enumerate(categories):
        rng = np.random.default_rng([seed, cat_index, PHOTO_CATEGORIES.index(category)])
        photo = _photo(category)
        normals = [_normal_image(category, photo, image_size, rng) for _ in range(n_train + n_test_good)]
        defects = []
        for i in range(n_test_defect):
            defect_type = defect_types[i % len(defect_types)]
            severity = (i // len(defect_types) % 3) / 2.0 if n_test_defect > len(defect_types) else rng.uniform(0, 1)
            base = _normal_image(category, photo, image_size, rng)
            image, mask = DEFECTS[defect_type](base, rng, float(severity))
            if not mask.any():  # never write an anomalous image with an empty mask
                mask[image_size // 2, image_size // 2] = True
            defects.append((defect_type, image, (mask * 255).astype(np.uint8)))
        _write_category(root, layout, category, normals[:n_train], normals[n_train:], defects, split_rows)
    if layout == "visa":
        split_dir = root / "split_csv"
        split_dir.mkdir(parents=True, exist_ok=True)
        with (split_dir / "1cls.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["object", "split", "label", "image", "mask"])
            writer.writerows(split_rows)
    return root


def _write_category(
    root: Path,
    layout: str,
    category: str,
    train: list[np.ndarray],
    test_good: list[np.ndarray],
    defects: list[tuple[str, np.ndarray, np.ndarray]],
    split_rows: list[list[str]],
) -> None:
    if layout == "visa":
        base = root / category / "Data"
        for i, image in enumerate(train + test_good):
            rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            _save(image, root / rel)
            split = "train" if i < len(train) else "test"
            split_rows.append([category, split, "normal", rel, ""])
        for i, (_, image, mask) in enumerate(defects):
            rel = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
            mask_rel = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            _save(image, root / rel)
            _save(mask, root / mask_rel)
            split_rows.append([category, "test", "anomaly", rel, mask_rel])
        base.mkdir(parents=True, exist_ok=True)
        return
    cat_root = root / category
    for i, image in enumerate(train):
        _save(image, cat_root / "train" / "good" / f"{i:03d}.png")
    for i, image in enumerate(test_good):
        _save(image, cat_root / "test" / "good" / f"{i:03d}.png")
    for i, (defect_type, image, mask) in enumerate(defects):
        folder = defect_type if layout == "mvtec" else "defect"
        _save(image, cat_root / "test" / folder / f"{i:03d}.png")
        _save(mask, cat_root / "ground_truth" / folder / f"{i:03d}_mask.png")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="output folder")
    parser.add_argument("--layout", default="mvtec", choices=LAYOUTS)
    parser.add_argument("--categories", nargs="+", default=None, choices=PHOTO_CATEGORIES)
    parser.add_argument("--defect-types", nargs="+", default=list(DEFECT_TYPES), choices=list(DEFECTS))
    parser.add_argument("--n-train", type=int, default=12)
    parser.add_argument("--n-test-good", type=int, default=4)
    parser.add_argument("--n-test-defect", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = make_synthetic_dataset(
        args.root,
        layout=args.layout,
        categories=args.categories,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        image_size=args.image_size,
        defect_types=args.defect_types,
        seed=args.seed,
    )
    print(f"Wrote a {args.layout}-layout dataset to {root}")


if __name__ == "__main__":
    main()
