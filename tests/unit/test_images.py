"""Images of every bit depth and mode keep their full range (issue 25): datamodules and inferencers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_multiclass.data.image import ImageTooLargeError, read_rgb


def _gray8(size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def _save_pair(folder, name: str, gray: np.ndarray) -> tuple:
    """The 8-bit image and its 16-bit copy (each value times 257: the same intensities)."""
    eight, sixteen = folder / f"{name}_8.png", folder / f"{name}_16.png"
    Image.fromarray(gray).save(eight)
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen)
    assert Image.open(sixteen).mode == "I;16"
    return eight, sixteen


def test_a_16_bit_image_reads_as_its_8_bit_copy(tmp_path):
    eight, sixteen = _save_pair(tmp_path, "part", _gray8())
    torch.testing.assert_close(read_rgb(sixteen), read_rgb(eight), atol=1e-6, rtol=0)
    assert float(read_rgb(sixteen).std()) > 0.1  # not the constant white picture anomalib's read_image makes


@pytest.mark.parametrize(
    ("mode", "suffix"), [("LA", "png"), ("CMYK", "tiff"), ("F", "tiff"), ("I", "tiff"), ("P", "png")]
)
def test_every_mode_reads_with_its_range(tmp_path, mode, suffix):
    gray = _gray8()
    source = Image.fromarray(gray)
    image = source.convert("F").point(lambda v: v / 255.0) if mode == "F" else source.convert(mode)
    path = tmp_path / f"image.{suffix}"
    image.save(path)
    expected = read_rgb(_save_pair(tmp_path, "reference", gray)[0])
    got = read_rgb(path)
    assert got.shape == (3, 64, 64)
    # CMYK goes through Pillow's colour conversion; the others are exact
    torch.testing.assert_close(got, expected, atol=2 / 255 if mode == "CMYK" else 1e-6, rtol=0)


def test_the_datamodule_reads_16_bit_images_with_their_range(synthetic_root, tmp_path):
    import shutil

    from anomalib_multiclass.data import MultiClassFolder

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    path = sorted((root / "brick" / "test" / "good").glob("*.png"))[0]
    gray = np.asarray(Image.open(path).convert("L"))
    Image.fromarray(gray).save(path)
    datamodule = MultiClassFolder(root=root, num_workers=0)
    datamodule.setup()
    index = datamodule.test_data.samples.index[datamodule.test_data.samples.image_path == str(path)][0]
    eight = datamodule.test_data[index].image
    Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    sixteen = datamodule.test_data[index].image
    torch.testing.assert_close(sixteen, eight, atol=1e-6, rtol=0)


def test_a_16_bit_image_and_its_8_bit_copy_score_the_same(tmp_path, monkeypatch):
    from anomalib_multiclass.deploy import MultiClassTorchInferencer
    from anomalib_multiclass.models import UniAD
    from tests.conftest import TINY_UNIAD

    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    torch.manual_seed(0)
    model = UniAD(**TINY_UNIAD).eval()
    inferencer = MultiClassTorchInferencer(path=model.to_torch(tmp_path), device="cpu")
    eight, sixteen = _save_pair(tmp_path, "part", _gray8())
    scores = [float(inferencer.predict(path).pred_score.reshape(-1)[0]) for path in (eight, sixteen)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)
    # a 2-D grayscale array (here uint16) is an image too, not a shape error
    array_score = inferencer.predict(np.asarray(Image.open(sixteen))).pred_score
    assert float(array_score.reshape(-1)[0]) == pytest.approx(scores[0], abs=1e-5)


def test_the_decompression_limit_names_the_file_and_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "line_scan.png"
    Image.fromarray(_gray8()).save(path)
    monkeypatch.setenv("ANOMALIB_MULTICLASS_MAX_IMAGE_PIXELS", "100")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with pytest.raises(ImageTooLargeError, match=r"line_scan\.png.*ANOMALIB_MULTICLASS_MAX_IMAGE_PIXELS"):
        read_rgb(path)
    monkeypatch.setenv("ANOMALIB_MULTICLASS_MAX_IMAGE_PIXELS", "0")
    assert read_rgb(path).shape == (3, 64, 64)


def test_an_8_bit_image_reads_bit_for_bit_as_anomalib_reads_it(tmp_path):
    """The same input tensor as anomalib's own ``read_image``: no last-bit differences that move training."""
    from anomalib.data.utils import read_image

    from anomalib_multiclass.data.image import read_rgb

    path = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(path)
    assert torch.equal(read_rgb(path), read_image(str(path), as_tensor=True))
