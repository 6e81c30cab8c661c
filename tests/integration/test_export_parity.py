"""Exported models give PyTorch's per-category scores, labels and maps, also far beyond the validation range.

The reference is what ``anomalib test``/``predict`` compute: the model's raw outputs, then the class-aware
post-processor with the image's true category (``post_process_batch``). The exported side is ONNX Runtime plus
``per_category_outputs`` on the graph's raw outputs, and ``MultiClassOpenVINOInferencer(category=...)`` in fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalib_multiclass.models import LGC, RLR, MintAD, OmniAD, UniAD
from tests.conftest import TINY_LGC, TINY_OMNI_AD, TINY_RLR, TINY_UNIAD

TINY_MINT_AD = {k: v for k, v in TINY_UNIAD.items() if k not in {"neighbor_size", "pool_size", "layers"}}
FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
MODELS = {
    "UniAD": (UniAD, TINY_UNIAD),
    "MintAD": (MintAD, TINY_MINT_AD),
    "RLR": (RLR, TINY_RLR),
    "OmniAD": (OmniAD, TINY_OMNI_AD),
    "LGC": (LGC, TINY_LGC),
}
CATEGORIES = ["brick", "coffee", "grass"]


@pytest.fixture(
    scope="module",
    params=[pytest.param(name, marks=() if name == "UniAD" else pytest.mark.slow) for name in MODELS],
)
def trained(request, synthetic_root, tmp_path_factory):
    from anomalib.engine import Engine

    from anomalib_multiclass.data import MultiClassFolder

    torch.manual_seed(0)
    cls, kwargs = MODELS[request.param]
    module = cls(**kwargs)
    engine = Engine(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=tmp_path_factory.mktemp("run"),
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(module, datamodule=MultiClassFolder(root=synthetic_root, num_workers=0, train_batch_size=6))
    return module.eval()


def _images(synthetic_root) -> torch.Tensor:
    """Test images of every category, then the same pushed far out of distribution (noise, inverted, saturated)."""
    from anomalib.data.utils import read_image

    paths = sorted(synthetic_root.glob("*/test/*/*.png"))[::4][:6]
    real = torch.stack([read_image(p, as_tensor=True) for p in paths])
    generator = torch.Generator().manual_seed(3)
    noise = torch.rand(real.shape, generator=generator)
    far = torch.cat([(real + noise).clamp(0, 1), 1 - real, (real * 4).clamp(0, 1), noise])
    return torch.cat([real, far])


def _reference(module, images: torch.Tensor, class_index: int):
    """What ``anomalib test`` gives for these images as images of category ``class_index``."""
    from anomalib_multiclass.data import MultiClassImageBatch

    batch = MultiClassImageBatch(image=images, class_index=torch.full((len(images),), class_index))
    with torch.no_grad():
        batch.update(image=module.pre_processor.transform(batch.image))  # the pre-processor's batch hook
        batch = module.predict_step(batch)
    module.post_processor.post_process_batch(batch)
    return batch


def _spread_table(module, images: torch.Tensor) -> None:
    """Per-category values that differ from the global ones where the old export clamped.

    Global: a narrow range over the lowest raw scores (most images clamp to 1 there); each category: thresholds and
    ranges at other places, so that images beyond the global range keep distinct per-category scores.
    """
    with torch.no_grad():
        raw = module.model(module.pre_processor.transform(images))
    score = raw.pred_score.reshape(-1)
    pixels = raw.anomaly_map.reshape(-1)
    post = module.post_processor
    q = lambda values, level: float(torch.quantile(values, level))  # noqa: E731
    post.image_min.fill_(q(score, 0.0))
    post.image_max.fill_(q(score, 0.2))
    post._image_threshold.fill_(q(score, 0.1))
    post.pixel_min.fill_(q(pixels[::7], 0.0))
    post.pixel_max.fill_(q(pixels[::7], 0.2))
    post._pixel_threshold.fill_(q(pixels[::7], 0.1))
    for index, top in enumerate((1.5, 3.0, 6.0)):
        post.class_image_min[index] = q(score, 0.0)
        post.class_image_max[index] = float(score.max()) * top
        post.class_image_threshold[index] = q(score, 0.3 + 0.2 * index)
        post.class_pixel_min[index] = q(pixels[::7], 0.0)
        post.class_pixel_max[index] = float(pixels.max()) * top
        post.class_pixel_threshold[index] = q(pixels[::7], 0.3 + 0.2 * index)


def _assert_same(got: dict, expected, what: str) -> None:
    score = expected.pred_score.reshape(-1).numpy()
    np.testing.assert_allclose(np.asarray(got["pred_score"]).reshape(-1), score, atol=1e-4, err_msg=what)
    amap = expected.anomaly_map.numpy()
    np.testing.assert_allclose(np.asarray(got["anomaly_map"]).reshape(amap.shape), amap, atol=1e-4, err_msg=what)
    decided = np.abs(score - 0.5) > 1e-3  # labels: wherever fp32 noise cannot move the score across the threshold
    label = np.asarray(got["pred_label"]).reshape(-1)
    assert label[decided].tolist() == expected.pred_label.reshape(-1).numpy()[decided].tolist(), what
    mask, expected_mask = np.asarray(got["pred_mask"]).reshape(amap.shape), expected.pred_mask.numpy()
    assert (mask != expected_mask).mean() < 1e-3, what


@pytest.mark.parametrize("table", ["spread", pytest.param("learnt", marks=pytest.mark.slow)])
def test_exported_per_category_outputs_equal_pytorch(trained, synthetic_root, tmp_path, table):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from anomalib_multiclass.category_map import read_metadata
    from anomalib_multiclass.deploy import MultiClassOpenVINOInferencer
    from anomalib_multiclass.deploy.inferencer import per_category_outputs, post_processor_from_metadata

    images = _images(synthetic_root)
    if table == "spread":
        _spread_table(trained, images)
    with torch.no_grad():
        raw_scores = trained.model(trained.pre_processor.transform(images)).pred_score.reshape(-1)
    post = trained.post_processor
    # the images reach far beyond the validation range: the old graph clamped them all to one value
    assert float(raw_scores.max()) > float(post.image_max)

    onnx_path = trained.to_onnx(export_root=tmp_path / "onnx", input_size=(64, 64))
    session = onnxruntime.InferenceSession(str(onnx_path))
    names = [output.name for output in session.get_outputs()]
    onnx_outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    deployed = post_processor_from_metadata(read_metadata(onnx_path))
    ov_path = trained.to_openvino(export_root=tmp_path / "ov", input_size=(64, 64))

    for class_index, category in enumerate(CATEGORIES):
        expected = _reference(trained, images, class_index)
        got = per_category_outputs(deployed, onnx_outputs, class_index)
        _assert_same(got, expected, f"ONNX Runtime, {category}")
        inferencer = MultiClassOpenVINOInferencer(path=ov_path, device="CPU", config=FP32, category=category)
        prediction = inferencer.predict(images)
        _assert_same(vars(prediction), expected, f"OpenVINO, {category}")
        assert prediction.category == [category] * len(images)

    # anomalib's own OpenVINOInferencer runs the same export and gets anomalib's fields: PyTorch's outputs for images
    # of unknown category (global values; MINT-AD: its predicted class), as ``engine.predict`` on a plain folder
    from anomalib.deploy import OpenVINOInferencer

    with torch.no_grad():
        unknown = trained(images)
    stock = OpenVINOInferencer(path=ov_path, device="CPU", config=FP32).predict(images.numpy())
    np.testing.assert_allclose(stock.pred_score.reshape(-1), unknown.pred_score.numpy().reshape(-1), atol=1e-4)
    np.testing.assert_allclose(stock.anomaly_map.reshape(unknown.anomaly_map.shape), unknown.anomaly_map, atol=1e-4)
