"""Exported models (ONNX Runtime, OpenVINO, anomalib's OpenVINOInferencer) give PyTorch's maps and scores."""

import numpy as np
import pytest
import torch

from anomalib_multiclass.models import LGC, RLR, MintAD, OmniAD, UniAD
from tests.conftest import TINY_LGC, TINY_LGC_LITE0, TINY_OMNI_AD, TINY_RLR, TINY_UNIAD

TINY_MINT_AD = {k: v for k, v in TINY_UNIAD.items() if k not in {"neighbor_size", "pool_size", "layers"}}
FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
MODELS = {
    "UniAD": (UniAD, TINY_UNIAD),
    "MintAD": (MintAD, TINY_MINT_AD),
    "RLR": (RLR, TINY_RLR),
    "OmniAD": (OmniAD, TINY_OMNI_AD),
    "LGC": (LGC, TINY_LGC),
    "LGC-Lite0": (LGC, TINY_LGC_LITE0),  # the RD decoder mirrored from an edge encoder
}


# the default suite exports UniAD to OpenVINO (its inferencers included); -m slow: every model, ONNX Runtime too
FAST_EXPORTS = {"UniAD"}


@pytest.fixture(
    scope="module",
    params=[pytest.param(name, marks=() if name in FAST_EXPORTS else pytest.mark.slow) for name in MODELS],
)
def trained_module(request, synthetic_root, tmp_path_factory):
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


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 64, 64)


@pytest.fixture(scope="module")
def reference(trained_module, images):
    with torch.no_grad():
        return trained_module(images)


def test_normalisation_was_learnt(trained_module):
    assert not torch.isnan(trained_module.post_processor.image_min)
    assert trained_module.post_processor.num_classes == 3


@pytest.mark.slow
def test_onnx_runtime_parity(trained_module, images, reference, tmp_path, caplog):
    onnxruntime = pytest.importorskip("onnxruntime")
    import onnx

    path = trained_module.to_onnx(export_root=tmp_path, input_size=(64, 64))
    # the opset torch's exporter writes, asked for directly: no failed down-conversion (and traceback) on the way
    assert {(o.domain, o.version) for o in onnx.load(str(path)).opset_import} >= {("", 18)}
    assert "Failed to convert the model" not in caplog.text
    session = onnxruntime.InferenceSession(str(path))
    names = [output.name for output in session.get_outputs()]
    assert {"pred_score", "anomaly_map"} <= set(names)
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    np.testing.assert_allclose(outputs["anomaly_map"], reference.anomaly_map.numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs["pred_score"], reference.pred_score.numpy(), atol=1e-4)
    if getattr(reference, "pred_class", None) is not None:  # models that classify: the class, and no class input
        assert len(session.get_inputs()) == 1
        np.testing.assert_array_equal(outputs["pred_class"], reference.pred_class.numpy())


@pytest.fixture(scope="module")
def openvino_path(trained_module, tmp_path_factory):
    """One fp32 OpenVINO export of the trained module, shared by the module's tests (an export takes a while)."""
    pytest.importorskip("openvino")
    return trained_module.to_openvino(export_root=tmp_path_factory.mktemp("openvino"), input_size=(64, 64))


def test_openvino_parity_and_inferencer(trained_module, images, reference, openvino_path, tmp_path):
    openvino = pytest.importorskip("openvino")
    from anomalib.deploy import OpenVINOInferencer

    from anomalib_multiclass.deploy import MultiClassOpenVINOInferencer, read_metadata

    path = openvino_path
    # CPUs with bf16 units (AMX, AVX512-BF16) run OpenVINO in bf16 unless told otherwise: parity is an fp32 claim
    compiled = openvino.Core().compile_model(str(path), "CPU", FP32)
    result = compiled(images.numpy())
    outputs = {port.get_any_name(): value for port, value in result.items()}
    np.testing.assert_allclose(outputs["anomaly_map"], reference.anomaly_map.numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs["pred_score"], reference.pred_score.numpy(), atol=1e-4)
    # torch writes a NaN guard after every masked softmax; where the mask leaves every query a key it never fires,
    # and the export removes it (deploy/graph.py): none is left, dead or kept
    from anomalib_multiclass.deploy.graph import dead_softmax_guards

    ir = openvino.Core().read_model(str(path))
    assert dead_softmax_guards(ir) == ([], [])
    # the plugin's Sin is a reference kernel: MINT-AD's become a polynomial, within the tolerance above
    assert "Sin" not in {op.get_type_name() for op in ir.get_ops()}

    metadata = read_metadata(path)
    assert metadata["category_names"] == ["brick", "coffee", "grass"]
    assert set(metadata["thresholds"]) == {"brick", "coffee", "grass", "global"}
    # anomalib's own inferencer runs every model (issue 16: it crashed on MINT-AD's pred_class); ours keeps the class
    stock = OpenVINOInferencer(path=path, device="CPU", config=FP32).predict(images[0])
    ours = MultiClassOpenVINOInferencer(path=path, device="CPU", config=FP32).predict(images[0])
    for prediction in (stock, ours):
        np.testing.assert_allclose(
            np.asarray(prediction.anomaly_map).squeeze(), reference.anomaly_map[0].squeeze().numpy(), atol=1e-4
        )
        np.testing.assert_allclose(
            np.asarray(prediction.pred_score).reshape(-1)[0], reference.pred_score[0].item(), atol=1e-4
        )
    assert not hasattr(stock, "pred_class")
    if getattr(reference, "pred_class", None) is not None:
        assert "pred_class" in metadata["hidden_outputs"]
        assert int(np.asarray(ours.pred_class).reshape(-1)[0]) == int(reference.pred_class[0])
        assert ours.category == [metadata["category_names"][int(reference.pred_class[0])]]
    else:
        assert ours.pred_class is None
        # a model without classifier, told the category: the post-processor's per-category maths on its raw outputs
        with torch.no_grad():
            raw = trained_module.model(trained_module.pre_processor.transform(images[:1]))
        expected = trained_module.post_processor.apply(raw.pred_score, raw.anomaly_map, 0)
        brick = MultiClassOpenVINOInferencer(path=path, device="CPU", config=FP32, category="brick").predict(images[0])
        assert brick.category == ["brick"]
        np.testing.assert_allclose(np.asarray(brick.pred_score).reshape(-1), expected["pred_score"].numpy(), atol=1e-4)
        assert np.asarray(brick.pred_label).reshape(-1).tolist() == expected["pred_label"].tolist()

    # the metadata is what our inferencer checks a category against: without it, a clear error
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in (".xml", ".bin"):
        (bare / path.with_suffix(suffix).name).write_bytes(path.with_suffix(suffix).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"multiclass_metadata\.json"):
        MultiClassOpenVINOInferencer(path=bare / path.name, device="CPU", category="brick")
    with pytest.raises(ValueError, match=r"'bottle' was not seen in training"):
        MultiClassOpenVINOInferencer(path=path, device="CPU", category="bottle")


def test_engine_predict_on_a_plain_folder_keeps_every_output(trained_module, images, tmp_path):
    # issue 16, case 3: anomalib's PredictDataset gives plain ImageBatches whose update() dropped pred_class, so
    # MINT-AD's per-class thresholds fell back to the global ones
    from anomalib.engine import Engine
    from PIL import Image

    pixels = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    with torch.no_grad():
        eager = trained_module(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255)
    engine = Engine(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    (batch,) = engine.predict(trained_module, data_path=tmp_path / "image.png")
    np.testing.assert_allclose(batch.pred_score.reshape(-1).numpy(), eager.pred_score.numpy(), atol=1e-5)
    np.testing.assert_allclose(batch.anomaly_map.squeeze().numpy(), eager.anomaly_map.squeeze().numpy(), atol=1e-5)
    assert torch.equal(batch.pred_label.reshape(-1), eager.pred_label.reshape(-1))
    if getattr(eager, "pred_class", None) is not None:
        assert torch.equal(batch.pred_class, eager.pred_class)


def test_torch_export_runs_in_anomalib_s_torch_inferencer(trained_module, images, reference, tmp_path, monkeypatch):
    from anomalib.deploy import TorchInferencer

    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # anomalib refuses to unpickle a .pt export without it: our own file

    from anomalib_multiclass.deploy import MultiClassTorchInferencer

    path = trained_module.to_torch(export_root=tmp_path)
    has_class = getattr(reference, "pred_class", None) is not None
    inferencers = [MultiClassTorchInferencer] + ([] if has_class else [TorchInferencer])
    for inferencer in inferencers:  # the stock one knows no pred_class: MINT-AD needs ours
        prediction = inferencer(path=path, device="cpu").predict(images[0])
        torch.testing.assert_close(prediction.pred_score.reshape(-1), reference.pred_score[:1], atol=1e-5, rtol=0)
    if has_class:
        assert torch.equal(prediction.pred_class.reshape(-1), reference.pred_class[:1])


# --- issue 25: per-category scores, labels and maps of exported models equal PyTorch's, also far beyond the
# validation range. The reference is what `anomalib test`/`predict` compute: the raw outputs, then the class-aware
# post-processor with the image's true category (`post_process_batch`). The exported side is ONNX Runtime plus
# `per_category_outputs` on the graph's raw outputs, and `MultiClassOpenVINOInferencer(category=...)` in fp32.
CATEGORIES = ["brick", "coffee", "grass"]


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
def test_exported_per_category_outputs_equal_pytorch(
    trained_module, synthetic_root, openvino_path, tmp_path, table, request
):
    onnxruntime = pytest.importorskip("onnxruntime")
    trained = trained_module
    images = _images(synthetic_root)
    # the stock inferencer reads anomalib's fields, normalised in the graph with the learnt (global) values
    _check_stock_inferencer(trained, images, openvino_path)
    saved = {name: buffer.clone() for name, buffer in trained.post_processor.state_dict().items()}
    if table == "spread":
        _spread_table(trained, images)
    # the default suite checks OpenVINO (UniAD, spread table); -m slow adds ONNX Runtime and every model
    with_onnx = table == "learnt" or request.node.get_closest_marker("slow") is not None
    try:
        _check_parity(trained, images, openvino_path, tmp_path, onnxruntime if with_onnx else None)
    finally:  # the module's other tests use the learnt table
        trained.post_processor.load_state_dict(saved)


def _with_table(trained, openvino_path, folder):
    """The export with the post-processor's current per-category table in its metadata (what the graph's raw
    outputs are normalised with: the table is not in the graph, so a changed one needs no new export)."""
    import json
    import shutil

    from anomalib_multiclass.category_map import METADATA_FILE

    folder.mkdir()
    for file in openvino_path.parent.iterdir():
        shutil.copy(file, folder / file.name)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata["thresholds"] = trained.post_processor.per_class_thresholds(CATEGORIES)
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    return folder / openvino_path.name


def _check_parity(trained, images, openvino_path, tmp_path, onnxruntime) -> None:
    from anomalib_multiclass.category_map import read_metadata
    from anomalib_multiclass.deploy import MultiClassOpenVINOInferencer
    from anomalib_multiclass.deploy.inferencer import per_category_outputs, post_processor_from_metadata

    with torch.no_grad():
        raw_scores = trained.model(trained.pre_processor.transform(images)).pred_score.reshape(-1)
    post = trained.post_processor
    # the images reach far beyond the validation range: the old graph clamped them all to one value
    assert float(raw_scores.max()) > float(post.image_max)

    ov_path = _with_table(trained, openvino_path, tmp_path / "ov")
    deployed = post_processor_from_metadata(read_metadata(ov_path))
    onnx_outputs = None
    if onnxruntime is not None:
        onnx_path = trained.to_onnx(export_root=tmp_path / "onnx", input_size=(64, 64))
        session = onnxruntime.InferenceSession(str(onnx_path))
        names = [output.name for output in session.get_outputs()]
        outputs = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        onnx_outputs = dict(zip(names, outputs, strict=True))

    inferencer = MultiClassOpenVINOInferencer(path=ov_path, device="CPU", config=FP32)
    for class_index, category in enumerate(CATEGORIES):
        expected = _reference(trained, images, class_index)
        if onnx_outputs is not None:
            _assert_same(per_category_outputs(deployed, onnx_outputs, class_index), expected, f"ONNX, {category}")
        prediction = inferencer.predict(images, category=category)
        _assert_same(vars(prediction), expected, f"OpenVINO, {category}")
        assert prediction.category == [category] * len(images)


def _check_stock_inferencer(trained, images, ov_path) -> None:
    """anomalib's own OpenVINOInferencer runs the export and gets anomalib's fields: PyTorch's outputs for images of
    unknown category (global values; MINT-AD: its predicted class), as ``engine.predict`` on a plain folder."""
    from anomalib.deploy import OpenVINOInferencer

    with torch.no_grad():
        unknown = trained(images)
    stock = OpenVINOInferencer(path=ov_path, device="CPU", config=FP32).predict(images.numpy())
    np.testing.assert_allclose(stock.pred_score.reshape(-1), unknown.pred_score.numpy().reshape(-1), atol=1e-4)
    np.testing.assert_allclose(stock.anomaly_map.reshape(unknown.anomaly_map.shape), unknown.anomaly_map, atol=1e-4)
