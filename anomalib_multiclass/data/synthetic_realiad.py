"""A generated dataset in Real-IAD's own layout, with its 30 category names, for runs at Real-IAD's shape offline.

Real-IAD itself needs the authors' approval to download; this writes what anomalib's ``RealIAD`` (and so
:class:`~anomalib_multiclass.data.MultiClassRealIAD`) reads, from the photos and defects of ``synthetic.py``
(each Real-IAD category takes one of its photos in turn):

- ``<root>/realiad_<resolution>/<category>/OK/S0001/<category>_0001_OK_C1_20240101000000.jpg`` for normal images,
  ``.../NG/<defect>/S0101/<category>_0101_NG_C1_20240101000000.{jpg,png}`` for defective images and their masks;
- ``<root>/realiad_jsons/realiad_jsons/<category>.json``: ``{"meta": ..., "train": [...], "test": [...]}``, each
  sample ``{"category", "anomaly_class" ("OK" or the defect), "image_path", "mask_path"}`` relative to the
  category folder.

Command line: ``python -m anomalib_multiclass.data.synthetic_realiad --root datasets/realiad_synthetic``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anomalib.data.datasets.image.realiad import CATEGORIES as REALIAD_CATEGORIES

from anomalib_multiclass.data.synthetic import _save
from anomalib_multiclass.data.synthetic_defects import ALL_CATEGORIES, DEFECTS, _normal_image, _photo

DEFECT_CODES = {"texture": "AK", "scratch": "HS", "stain": "QS", "blur": "BX", "cutpaste": "YW"}  # Real-IAD's codes


def make_synthetic_realiad(
    root: str | Path,
    categories: Sequence[str] = REALIAD_CATEGORIES,
    n_train: int = 40,
    n_test_good: int = 20,
    n_test_defect: int = 20,
    image_size: int = 64,
    resolution: str = "256",
    seed: int = 0,
) -> Path:
    """Write the dataset and return ``root`` (pass it as ``MultiClassRealIAD(root=..., resolution=...)``)."""
    root = Path(root)
    unknown = [c for c in categories if c not in REALIAD_CATEGORIES]
    if unknown:
        msg = f"Unknown Real-IAD categories {unknown}. Available: {list(REALIAD_CATEGORIES)}."
        raise ValueError(msg)
    (root / "realiad_jsons" / "realiad_jsons").mkdir(parents=True, exist_ok=True)
    defect_names = list(DEFECT_CODES)
    for index, category in enumerate(categories):
        rng = np.random.default_rng([seed, REALIAD_CATEGORIES.index(category)])
        photo_name = ALL_CATEGORIES[REALIAD_CATEGORIES.index(category) % len(ALL_CATEGORIES)]
        photo = _photo(photo_name)
        folder = root / f"realiad_{resolution}" / category
        train, test = [], []
        for number in range(1, n_train + n_test_good + 1):
            relative = f"OK/S{number:04d}/{category}_{number:04d}_OK_C1_20240101000000.jpg"
            _save(_normal_image(photo_name, photo, image_size, rng), folder / relative)
            sample = {"category": category, "anomaly_class": "OK", "image_path": relative, "mask_path": None}
            (train if number <= n_train else test).append(sample)
        for offset in range(n_test_defect):
            number = 1000 + offset
            defect = defect_names[offset % len(defect_names)]
            image, mask = DEFECTS[defect](_normal_image(photo_name, photo, image_size, rng), rng, (offset % 3) / 2)
            if not mask.any():
                mask[image_size // 2, image_size // 2] = True
            stem = f"NG/{DEFECT_CODES[defect]}/S{number:04d}/{category}_{number:04d}_NG_C1_20240101000000"
            _save(image, folder / f"{stem}.jpg")
            _save((mask * 255).astype(np.uint8), folder / f"{stem}.png")
            test.append(
                {"category": category, "anomaly_class": DEFECT_CODES[defect], "image_path": f"{stem}.jpg",
                 "mask_path": f"{stem}.png"}
            )  # fmt: skip
        metadata = {"meta": {"prefix": "", "normal_class": "OK", "index": index}, "train": train, "test": test}
        (root / "realiad_jsons" / "realiad_jsons" / f"{category}.json").write_text(json.dumps(metadata))
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m anomalib_multiclass.data.synthetic_realiad --root ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-defect", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    root = make_synthetic_realiad(
        args.root, n_train=args.n_train, n_test_good=args.n_test_good, n_test_defect=args.n_test_defect,
        image_size=args.image_size,
    )  # fmt: skip
    print(f"Wrote a Real-IAD-layout dataset ({len(REALIAD_CATEGORIES)} categories) to {root}")


if __name__ == "__main__":
    main()
