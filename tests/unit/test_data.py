import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_multiclass.data import (
    CorruptImageError,
    EmptyCategoryError,
    MaskMismatchError,
    MixedMultiClassDataModule,
    MultiClassFolder,
    MultiClassImageBatch,
    MultiClassMVTecAD,
    MultiClassRealIAD,
    MultiClassVisA,
    UnknownCategoryError,
    check_category_names,
)
from anomalib_multiclass.data.synthetic import make_synthetic_dataset
from anomalib_multiclass.models.components.base import CategoryMismatchError


def _datamodule(root, **kwargs):
    kwargs = {"train_batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "seed": 0, **kwargs}
    datamodule = MultiClassFolder(root=root, **kwargs)
    datamodule.setup()
    return datamodule


def _copy(root, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(root, target)
    return target


def test_batches_carry_category_and_consistent_class_index(synthetic_root):
    datamodule = _datamodule(synthetic_root, val_split_mode="from_test")
    assert datamodule.category_names == ["brick", "coffee", "grass"]
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.test_dataloader()):
        seen = set()
        for batch in loader:
            assert isinstance(batch, MultiClassImageBatch)
            assert batch.image.shape[1] == 3
            for category, index in zip(batch.category, batch.class_index.tolist(), strict=True):
                assert datamodule.category_names[index] == category
                seen.add(category)
        assert seen == {"brick", "coffee", "grass"}, "every split holds every category"


def test_validation_split_takes_every_category(synthetic_root):
    datamodule = _datamodule(synthetic_root, val_split_mode="from_test")
    val = datamodule.val_data.samples
    test = datamodule.test_data.samples
    assert set(val.category) == set(test.category) == {"brick", "coffee", "grass"}
    assert not set(val.image_path) & set(test.image_path)


def test_explicit_category_order_keeps_trained_indices(synthetic_root):
    datamodule = _datamodule(synthetic_root, categories=["grass"], category_names=["grass", "brick", "coffee"])
    batch = next(iter(datamodule.test_dataloader()))
    assert set(batch.class_index.tolist()) == {0}
    with pytest.raises(UnknownCategoryError, match="coffee"):
        _datamodule(synthetic_root, category_names=["grass", "brick"])


def test_mixed_datasets_are_namespaced_with_one_index_space(synthetic_root, tmp_path):
    other = make_synthetic_dataset(
        tmp_path / "other",
        categories=["brick", "coins"],
        n_train=3,
        n_test_good=1,
        n_test_defect=2,
        image_size=64,
        seed=5,
    )
    mixed = MixedMultiClassDataModule(
        datamodules=[MultiClassFolder(root=synthetic_root), MultiClassFolder(root=other)],
        prefixes=["a", "b"],
        train_batch_size=64,
        eval_batch_size=64,
        num_workers=0,
    )
    mixed.setup()
    assert mixed.category_names == ["a/brick", "a/coffee", "a/grass", "b/brick", "b/coins"]
    batch = next(iter(mixed.train_dataloader()))
    assert set(batch.category) == set(mixed.category_names), "a batch mixes the datasets"
    for category, index in zip(batch.category, batch.class_index.tolist(), strict=True):
        assert mixed.category_names[index] == category
    assert len(mixed.train_data) == 3 * 6 + 2 * 3


def test_visa_layout_goes_through_anomalibs_split_preparation(tmp_path):
    root = make_synthetic_dataset(
        tmp_path / "visa",
        layout="visa",
        categories=["gravel", "coins"],
        n_train=3,
        n_test_good=2,
        n_test_defect=2,
        image_size=64,
    )
    # our generator uses two of VisA's own category names' slots: rename to real VisA categories
    for old, new in (("gravel", "candle"), ("coins", "capsules")):
        (root / old).rename(root / new)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text().replace("gravel", "candle").replace("coins", "capsules"))
    datamodule = MultiClassVisA(root=root, categories=["candle", "capsules"], num_workers=0, train_batch_size=8)
    datamodule.prepare_data()
    datamodule.setup()
    assert datamodule.category_names == ["candle", "capsules"]
    assert len(datamodule.train_data) == 6
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.gt_mask is not None


def test_unknown_category_lists_the_available_ones(synthetic_root):
    with pytest.raises(UnknownCategoryError, match=r"bottle.*Available: \['brick', 'coffee', 'grass'\]"):
        MultiClassFolder(root=synthetic_root, categories=["bottle"]).categories  # noqa: B018
    with pytest.raises(UnknownCategoryError, match="carpet"):
        MultiClassMVTecAD(root=synthetic_root, categories=["carpet", "brick"]).categories  # noqa: B018


def test_empty_category_folder_is_an_error(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    for image in (root / "coffee" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(EmptyCategoryError, match=r"coffee.*train/good"):
        _datamodule(root)


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MultiClassFolder(root=tmp_path / "nothing").categories  # noqa: B018


def test_corrupt_image_is_named(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    bad = root / "grass" / "train" / "good" / "001.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(CorruptImageError, match=r"001\.png"):
        _datamodule(root, verify=True)


def test_every_split_is_opened_before_training(synthetic_root, tmp_path):
    """Issue 25: a bad test image is named at setup (headers of every split), not after a training epoch."""
    root = _copy(synthetic_root, tmp_path)
    empty = sorted((root / "coffee" / "test").rglob("*.png"))[-1]
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=re.escape(str(empty))):
        _datamodule(root)


def test_verify_decodes_every_pixel(synthetic_root, tmp_path):
    """A file whose header reads but whose pixels are cut off passes the header check; ``verify=True`` finds it."""
    root = _copy(synthetic_root, tmp_path)
    truncated = sorted((root / "brick" / "test" / "good").glob("*.png"))[0]
    truncated.write_bytes(truncated.read_bytes()[:200])
    datamodule = _datamodule(root)  # headers only: fine
    samples = datamodule.test_data.samples
    index = samples.index[samples.image_path == str(truncated)][0]
    with pytest.raises(CorruptImageError, match=re.escape(str(truncated))):
        datamodule.test_data[index]
    with pytest.raises(CorruptImageError, match=re.escape(str(truncated))):
        _datamodule(root, verify=True)


def test_anomalous_image_without_mask_is_named(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    mask = next((root / "brick" / "ground_truth").rglob("*_mask.png"))
    mask.unlink()
    with pytest.raises((ValueError, MaskMismatchError), match=r"mask"):
        _datamodule(root)


def test_mask_size_mismatch_names_both_files(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    mask = next((root / "brick" / "ground_truth").rglob("*_mask.png"))
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(mask)
    with pytest.raises(MaskMismatchError, match=mask.name):
        _datamodule(root, verify=True)
    with pytest.raises(MaskMismatchError, match=mask.name):  # headers are read without verify too
        _datamodule(root)


def test_grayscale_and_rgba_images_load_as_rgb(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    good = sorted((root / "brick" / "train" / "good").glob("*.png"))
    Image.open(good[0]).convert("L").save(good[0])
    Image.open(good[1]).convert("RGBA").save(good[1])
    datamodule = _datamodule(root)
    samples = datamodule.train_data.samples
    for path in good[:2]:
        item = datamodule.train_data[samples.index[samples.image_path == str(path)][0]]
        assert item.image.shape[0] == 3


def test_category_map_mismatch_is_refused():
    check_category_names(["a", "b"], ["a", "b"])
    with pytest.raises(CategoryMismatchError, match="not seen in training"):
        check_category_names(["a", "b"], ["a", "c"])
    with pytest.raises(CategoryMismatchError, match="category_names"):
        check_category_names(["a", "b"], ["b", "a"])


def _convert(path, suffix):
    """Re-save an image in another format (JPEG for .jpg/.jpeg) and delete the original."""
    target = path.with_suffix(suffix)
    image = Image.open(path)
    image.convert("RGB" if suffix.lower() in {".jpg", ".jpeg"} else image.mode).save(target)
    path.unlink()
    return target


def test_folder_reads_every_format_anomalibs_folder_reads(synthetic_root, tmp_path, caplog):
    # issue 16, case 2: a folder of JPEG photos lost all but its .png images, and JPEG defects crashed pandas
    root = _copy(synthetic_root, tmp_path)
    brick = root / "brick"
    train = sorted((brick / "train" / "good").glob("*.png"))
    for path, suffix in zip(train[1:], [".jpg", ".JPG", ".jpeg", ".bmp", ".tif", ".TIFF"], strict=False):
        _convert(path, suffix)
    for path in (brick / "test" / "good").glob("*.png"):
        _convert(path, ".jpg")
    defects = sorted((brick / "test").glob("[!g]*/*.png"))
    for path in defects:
        _convert(path, ".JPG")
    mask = next((brick / "ground_truth").rglob("*_mask.png"))
    _convert(mask, ".bmp")  # masks: image stem + _mask + any supported extension
    (brick / "train" / "good" / "notes.txt").write_text("not an image")
    (brick / "train" / "good" / ".thumbnail.png").write_bytes(b"")
    (brick / "ground_truth" / "stray_mask.png").write_bytes(b"")

    datamodule = _datamodule(root)
    train_samples = datamodule.train_data.samples
    test_samples = datamodule.test_data.samples
    assert (train_samples.category == "brick").sum() == 6
    brick_test = test_samples[test_samples.category == "brick"]
    assert len(brick_test) == 3 + 5
    assert (brick_test.label_index == 1).sum() == len(defects) == 5
    pairs = zip(brick_test.image_path, brick_test.mask_path, strict=True)
    assert all(Path(mask).stem == Path(image).stem + "_mask" for image, mask in pairs if mask)
    index = test_samples.index[test_samples.image_path.str.endswith(".JPG")][0]
    item = datamodule.test_data[index]  # a JPEG defect image with its mask loads
    assert item.gt_mask.shape == item.image.shape[-2:]
    unused = {path.name: reason for path, reason in datamodule.unused_files}
    assert set(unused) == {"notes.txt", ".thumbnail.png", "stray_mask.png"}
    assert "not an image format" in unused["notes.txt"]
    assert "3 file(s) not used" in caplog.text

    caplog.clear()
    _datamodule(root, verify=True)
    for name in unused:
        assert name in caplog.text, "verify=True names every file it does not use"


def test_folder_jpeg_defect_without_mask_is_named(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    defect = _convert(sorted((root / "grass" / "test").glob("[!g]*/*.png"))[0], ".jpg")
    next((root / "grass" / "ground_truth").rglob(f"{defect.stem}_mask.*")).unlink()
    with pytest.raises(MaskMismatchError, match=re.escape(str(defect))):
        _datamodule(root)


def test_empty_category_list_is_a_clear_error(synthetic_root):
    # issue 16, case 5: categories=[] gave pandas' "No objects to concatenate"
    with pytest.raises(ValueError, match=r"`categories` is an empty list.*leave `categories` out"):
        MultiClassFolder(root=synthetic_root, categories=[])


def test_skipped_category_folders_are_logged(synthetic_root, tmp_path, caplog):
    # issue 16, case 5: a category folder without train/ was dropped without a word
    root = _copy(synthetic_root, tmp_path)
    shutil.rmtree(root / "coffee" / "train")
    datamodule = MultiClassFolder(root=root)
    assert datamodule.categories == ["brick", "grass"]
    assert re.search(r"skipping folder .*coffee: it has no train/ folder", caplog.text)


def test_run_folder_stays_short_for_long_category_lists(synthetic_root):
    # issue 16, case 5: 29 Real-IAD names joined into one folder name gave "File name too long"
    from anomalib.data.datasets.image.realiad import CATEGORIES

    from anomalib_multiclass.data.datamodule import run_folder_name

    names = sorted(CATEGORIES)[:29]
    folder = run_folder_name(names)
    assert len(folder) <= 64
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", folder)
    assert folder != run_folder_name(names[:28]), "two lists never share a folder"
    assert run_folder_name(["brick", "coffee"]) == "brick+coffee", "short plain lists stay readable"
    assert "/" not in run_folder_name(["mvtecad/bottle", "visa/candle"])
    assert MultiClassFolder(root=synthetic_root, categories=["grass", "brick"]).category == "grass+brick"
    realiad = MultiClassRealIAD(root=synthetic_root, categories=names)
    assert realiad.category == folder, "the run folder anomalib makes from datamodule.category"


def test_non_ascii_category_names_work(synthetic_root, tmp_path):
    # issue 16, case 5: anomalib's MVTec parser refuses paths outside printable ASCII ("empty category" error)
    root = _copy(synthetic_root, tmp_path)
    (root / "coffee").rename(root / "café")
    datamodule = _datamodule(root)
    assert datamodule.category_names == ["brick", "café", "grass"]
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", MultiClassFolder(root=root, categories=["café"]).category)
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[0] == 4


def _without_masks(synthetic_root, tmp_path, category: str = "grass"):
    root = _copy(synthetic_root, tmp_path)
    shutil.rmtree(root / category / "ground_truth")
    return root


def test_a_category_without_ground_truth_is_evaluated_at_image_level(synthetic_root, tmp_path, caplog):
    # issue 25, case 7: one category without ground_truth/ stopped the run
    datamodule = _datamodule(_without_masks(synthetic_root, tmp_path), val_split_mode="from_test")
    assert re.search(r"category \['grass'\] has no ground-truth masks: its pixel metrics are n/a", caplog.text)
    flags: dict[str, set[bool]] = {}
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        for batch in loader:
            assert batch.gt_mask.shape[0] == len(batch.category), "one (placeholder) mask per image"
            for category, flag, mask in zip(batch.category, batch.has_gt_mask.tolist(), batch.gt_mask, strict=True):
                flags.setdefault(category, set()).add(flag)
                if not flag:
                    assert not mask.any(), "the placeholder is all zero"
    assert flags == {"brick": {True}, "coffee": {True}, "grass": {False}}


def test_mvtec_layout_category_without_ground_truth_is_read_by_the_folder_parser(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path / "src")
    names = {"brick": "bottle", "coffee": "cable", "grass": "carpet"}
    for old, new in names.items():
        (root / old).rename(root / new)
    shutil.rmtree(root / "carpet" / "ground_truth")
    datamodule = MultiClassMVTecAD(root=root, categories=list(names.values()), num_workers=0, eval_batch_size=32)
    datamodule.setup()
    test = datamodule.test_data.samples
    assert set(test.category) == set(names.values())
    assert datamodule.test_data.categories_without_masks == {"carpet"}
    assert (test[test.category == "carpet"].label_index == 1).sum() == 5, "every defective carpet image is kept"


def test_a_category_with_some_masks_missing_is_still_refused(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    mask = sorted((root / "coffee" / "ground_truth").rglob("*_mask.png"))[0]
    image = root / "coffee" / "test" / mask.parent.name / mask.name.replace("_mask", "")
    mask.unlink()
    with pytest.raises(MaskMismatchError, match=re.escape(str(image))):
        _datamodule(root)


def test_the_table_says_n_a_for_the_pixels_of_a_category_without_masks(synthetic_root, tmp_path, caplog):
    import json

    import torch
    from anomalib.engine import Engine

    from anomalib_multiclass.models import UniAD
    from tests.conftest import TINY_UNIAD

    root = _without_masks(synthetic_root, tmp_path)
    torch.manual_seed(0)
    engine = Engine(
        max_epochs=1, limit_train_batches=1, accelerator="cpu", default_root_dir=tmp_path / "results", logger=False
    )
    datamodule = MultiClassFolder(root=root, num_workers=0, train_batch_size=6, eval_batch_size=8, seed=0)
    engine.fit(UniAD(**TINY_UNIAD), datamodule=datamodule)
    engine.test(engine.model, datamodule=datamodule)
    (table_path,) = (tmp_path / "results").rglob("per_category_metrics.json")
    table = json.loads(table_path.read_text())
    for category in ("brick", "coffee"):
        assert 0 <= (table[category]["pixel_AUROC"] or -1) <= 1
    assert table["grass"]["pixel_AUROC"] is None
    assert table["grass"]["AUPRO"] is None
    assert table["grass"]["image_AUROC"] is not None, "its images are still evaluated"
    assert table["mean"]["n_categories"]["pixel_AUROC"] == 2
    assert table["mean"]["n_categories"]["image_AUROC"] == 3
    assert "no ground-truth masks" in caplog.text


def test_anomalib_components_that_read_placeholder_masks_are_named(synthetic_root, tmp_path, caplog):
    from types import SimpleNamespace

    from anomalib.post_processing import PostProcessor

    from anomalib_multiclass.evaluation import PerCategoryEvaluator

    datamodule = MultiClassFolder(root=_without_masks(synthetic_root, tmp_path), num_workers=0)
    model = SimpleNamespace(post_processor=PostProcessor(), evaluator=PerCategoryEvaluator())
    datamodule.trainer = SimpleNamespace(lightning_module=model)
    datamodule.setup()
    assert re.search(
        r"the post-processor PostProcessor reads every image's gt_mask: the images of \['grass'\]", caplog.text
    )
    assert "PerCategoryEvaluator reads" not in caplog.text
