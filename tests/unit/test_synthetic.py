import hashlib

import numpy as np
import pytest
from PIL import Image

from anomalib_multiclass.data.synthetic import DEFECT_TYPES, make_synthetic_dataset


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    kwargs = {"categories": ["brick"], "n_train": 2, "n_test_good": 1, "n_test_defect": 2, "image_size": 32}
    a = make_synthetic_dataset(tmp_path / "a", seed=3, **kwargs)
    b = make_synthetic_dataset(tmp_path / "b", seed=3, **kwargs)
    c = make_synthetic_dataset(tmp_path / "c", seed=4, **kwargs)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_mvtec_layout_masks_match_defects(synthetic_root):
    for category in ("brick", "grass", "coffee"):
        base = synthetic_root / category
        assert len(list((base / "train" / "good").glob("*.png"))) == 6
        defects = [p for p in (base / "test").rglob("*.png") if p.parent.name != "good"]
        assert len(defects) == 5
        assert {p.parent.name for p in defects} <= set(DEFECT_TYPES)
        for image_path in defects:
            mask_path = base / "ground_truth" / image_path.parent.name / f"{image_path.stem}_mask.png"
            mask = np.asarray(Image.open(mask_path))
            assert mask.shape == np.asarray(Image.open(image_path)).shape[:2]
            assert mask.max() == 255, f"empty mask {mask_path}"
            assert 0 < (mask > 0).mean() < 0.6


def test_defects_change_the_image_inside_the_mask(tmp_path):
    root = make_synthetic_dataset(
        tmp_path, categories=["grass"], n_train=1, n_test_good=1, n_test_defect=5, image_size=64
    )
    for image_path in (root / "grass" / "test").rglob("*.png"):
        if image_path.parent.name == "good":
            continue
        mask = (
            np.asarray(
                Image.open(root / "grass" / "ground_truth" / image_path.parent.name / f"{image_path.stem}_mask.png")
            )
            > 0
        )
        assert mask.any()


@pytest.mark.parametrize("layout", ["visa", "folder"])
def test_other_layouts(tmp_path, layout):
    root = make_synthetic_dataset(
        tmp_path,
        layout=layout,
        categories=["gravel", "coins"],
        n_train=2,
        n_test_good=1,
        n_test_defect=2,
        image_size=32,
    )
    if layout == "visa":
        assert (root / "split_csv" / "1cls.csv").read_text().count("\n") == 1 + 2 * 5
        assert len(list((root / "coins" / "Data" / "Masks" / "Anomaly").glob("*.png"))) == 2
    else:
        assert len(list((root / "coins" / "test" / "defect").glob("*.png"))) == 2


def test_unknown_category_and_layout_are_explained(tmp_path):
    with pytest.raises(ValueError, match="Available"):
        make_synthetic_dataset(tmp_path, categories=["bottle"])
    with pytest.raises(ValueError, match="layout"):
        make_synthetic_dataset(tmp_path, layout="coco")


def test_the_second_set_has_other_photos_and_defects_that_change_their_masked_pixels(tmp_path):
    # issue 26: a second test proxy, used for no choice: other photos (textures included), other defect shapes
    from anomalib_multiclass.data.synthetic import DEFECTS, HELDOUT_CATEGORIES, HELDOUT_DEFECT_TYPES

    assert not set(HELDOUT_DEFECT_TYPES) & set(DEFECT_TYPES)
    assert {"tissue", "moon"} <= set(HELDOUT_CATEGORIES)
    root = make_synthetic_dataset(
        tmp_path / "heldout", categories=HELDOUT_CATEGORIES, defect_types=HELDOUT_DEFECT_TYPES,
        n_train=1, n_test_good=1, n_test_defect=5, image_size=96, seed=0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for category in HELDOUT_CATEGORIES:
        normal = np.asarray(Image.open(root / category / "test" / "good" / "000.png").convert("RGB"))
        for defect in HELDOUT_DEFECT_TYPES:
            (image_path,) = (root / category / "test" / defect).glob("*.png")
            mask = np.asarray(Image.open(root / category / "ground_truth" / defect / f"{image_path.stem}_mask.png")) > 0
            assert 0 < mask.mean() < 0.25, (category, defect)
            changed, own_mask = DEFECTS[defect](normal, rng, 0.5)
            difference = np.abs(changed.astype(float) - normal).max(axis=-1)
            assert difference[own_mask].mean() > 5 * max(difference[~own_mask].mean(), 0.5), (category, defect)
