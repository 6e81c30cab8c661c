"""Bad values and files are named with their fix (issue 25), instead of a traceback from deep inside."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from anomalib_multiclass.models import UniAD
from tests.conftest import TINY_UNIAD


def test_layers_beyond_the_backbone_are_named():
    with pytest.raises(ValueError, match=r"layers=\[0, 1, 7\] does not fit backbone 'tf_efficientnet_lite0'.*stages 0"):
        UniAD(**{**TINY_UNIAD, "layers": (0, 1, 7)})


@pytest.mark.parametrize(("name", "value"), [("lr", -0.01), ("lr", 0.0), ("weight_decay", -1.0)])
def test_a_negative_learning_rate_is_refused_before_training(name, value):
    model = UniAD(**{**TINY_UNIAD, name: value})
    with pytest.raises(ValueError, match=rf"{name}={value} is not a valid {name}.*--model\.{name}"):
        model.setup("fit")


@pytest.mark.parametrize("neighbor_size", [9, 5, -1])
def test_a_neighborhood_that_masks_every_token_is_refused_with_the_grid(neighbor_size):
    # 64 px at stride 16: a 4 x 4 token grid; 9 covered it all from every token (the mask then masked nothing)
    with pytest.raises(ValueError, match=rf"neighbor_size={neighbor_size} does not fit the 4 x 4 token grid.*1 to 3"):
        UniAD(**{**TINY_UNIAD, "neighbor_size": neighbor_size})


def test_two_images_with_one_stem_are_named(synthetic_root, tmp_path):
    from anomalib_multiclass.data import MaskMismatchError
    from anomalib_multiclass.data.folder import read_category_folder

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    png = sorted((root / "brick" / "test").glob("[!g]*/*.png"))[0]
    Image.open(png).convert("RGB").save(png.with_suffix(".jpg"))
    with pytest.raises(MaskMismatchError, match=rf"{png.stem}\.jpg and .*{png.stem}\.png have the same name"):
        read_category_folder(root / "brick")


def test_predict_skips_an_unreadable_file_by_name(tmp_path, caplog):
    from anomalib_multiclass.data.predict import ReadablePredictDataset

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    with caplog.at_level("WARNING"):
        dataset = ReadablePredictDataset(tmp_path)
    assert [path.name for path in map(__import__("pathlib").Path, dataset.image_filenames)] == ["good.png"]
    assert "empty.png: an empty (zero-byte) file" in caplog.text
    assert "text.png" in caplog.text
    assert dataset[0].image.shape == (3, 32, 32)


def test_the_cli_predict_uses_the_readable_dataset():
    import anomalib.cli.cli  # noqa: F401 - the registration hook patches the engine when the CLI is imported
    import anomalib.engine.engine as engine_module

    from anomalib_multiclass.data.predict import ReadablePredictDataset

    assert engine_module.PredictDataset is ReadablePredictDataset
