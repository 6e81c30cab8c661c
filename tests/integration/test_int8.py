"""INT8 OpenVINO export (NNCF), calibrated on images of every category, for every model of the package."""

import sys

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from anomalib_multiclass.data import MultiClassFolder
from anomalib_multiclass.deploy.compress import compress_openvino_model
from anomalib_multiclass.deploy.quantize import (
    anomaly_map_operations,
    calibration_images,
    category_sample_indices,
    encoder_stem_operations,
    float_compute_operations,
    frozen_encoder_operations,
    quantization_settings,
    quantize_ptq,
)
from anomalib_multiclass.models import LGC, RLR, MintAD, OmniAD, UniAD
from tests.conftest import TINY_LGC_LITE0, TINY_OMNI_AD, TINY_RLR, TINY_UNIAD

pytest.importorskip("nncf", reason="pip install 'anomalib-multiclass[edge]'")
openvino = pytest.importorskip("openvino")

FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
REAL = {"backbone": "tf_efficientnet_lite0", "pre_trained": True}
TINY_MINT_AD = {k: v for k, v in TINY_UNIAD.items() if k not in {"neighbor_size", "pool_size", "layers"}}
# real ImageNet Lite0 features (an AUROC to compare), tiny everything else; LGC on Lite0 stages 1-3 (mirrored RD)
MODELS = {
    "UniAD": (UniAD, {**TINY_UNIAD, **REAL}),
    "MintAD": (MintAD, {**TINY_MINT_AD, **REAL}),
    "RLR": (RLR, {**TINY_RLR, **REAL}),
    "OmniAD": (OmniAD, {**TINY_OMNI_AD, **REAL}),
    "LGC": (LGC, {**TINY_LGC_LITE0, **REAL}),
}
# Float islands of each INT8_PTQ export (``float_compute_operations``: convolutions and matrix products without an
# INT8 input) at the package's defaults, measured by this test on the tiny models: the encoder's stem (its first two
# convolutions; the rest of the frozen Lite0 encoder is INT8 since the stem default, issue 27: 35 -> 4 for UniAD,
# MINT-AD and RLR, 47 -> 16 for Omni-AD, 41 -> 10 for LGC) and the products NNCF keeps in float: the attention
# products of two activations, and the anomaly map's Gaussian blur as two matrix products (``MatrixGaussianBlur2d``,
# with Omni-AD's and LGC's bilinear upsampling of each stage map folded into them). A change that leaves more
# layers in float fails here, before it shows as lost speed.
FLOAT_COMPUTE_OPS = {"UniAD": 4, "MintAD": 4, "RLR": 4, "OmniAD": 16, "LGC": 10}
# INT8 - fp32 of the mean per-category image AUROC, this test's models, data and export over several training seeds,
# measured by `python -m benchmarks.int8_tolerance --models <model> --seeds 0 1 2`:
# - UniAD, MINT-AD, RLR, Omni-AD with the stem default (issue 27; package code of 3b936aa): UniAD 0.000 +0.089
#   +0.122, MintAD +0.022 +0.089 +0.033, RLR -0.056 -0.056 +0.011, Omni-AD -0.033 +0.022 +0.011 (before, with the
#   whole encoder in float, at 9c35101: UniAD up to +0.067, MintAD +0.011, RLR -0.033, Omni-AD -0.044);
# - LGC with the stem default: -0.089 0.000 -0.033 (the whole encoder in float: 0.000 +0.022).
# These tiny models at 64 px rank the test images far from perfectly (fp32 AUROC 0.51-0.80 over the seeds): near-
# tied scores that 8-bit noise reorders, in both directions. The proxy's models are the accuracy guard that means
# something: there every model's default INT8 stays within 0.5 point of fp32 (mean) and 1 point (each category) on
# the validation proxy (benchmarks/results/edge.md). Here the test catches an export that breaks the ranking outright.
# Tolerance: each model's largest |difference| plus one swapped pair (8 images per category, 3 categories:
# 1/15/3 = 0.022), rounded up to the next 0.01
AUROC_TOLERANCE = {"UniAD": 0.15, "MintAD": 0.12, "RLR": 0.08, "OmniAD": 0.06, "LGC": 0.12}
# Omni-AD after 2 epochs ranks the 64 px test images about at random (fp32 AUROC 0.42): near-tied scores that any
# perturbation reorders; after 6 it ranks them (0.80), and INT8's AUROC comparison means something
EPOCHS = {"OmniAD": 6}


def _datamodule(root, **kwargs):
    return MultiClassFolder(root=root, num_workers=0, train_batch_size=6, eval_batch_size=32, **kwargs)


# --- fast: the calibration set and the quantizer on a small graph ---------------------------------------------------
def test_calibration_draws_the_same_share_of_every_category(synthetic_root):
    categories = ["a"] * 5 + ["b"] * 2 + ["c"] * 9
    indices = category_sample_indices(categories, 3)
    assert sorted(categories[i] for i in indices) == ["a"] * 3 + ["b"] * 2 + ["c"] * 3
    assert [categories[i] for i in indices[:3]] == ["a", "b", "c"]  # interleaved: a cut-short subset sees all
    assert indices == category_sample_indices(categories, 3)  # seeded
    with pytest.raises(ValueError, match="at least 1"):
        category_sample_indices(categories, 0)

    datamodule = _datamodule(synthetic_root, calibration_images_per_category=2)
    datamodule.setup("fit")
    images = calibration_images(datamodule, input_size=(32, 32))  # the datamodule's share
    assert len(images) == 2 * len(datamodule.categories)
    assert all(image.shape == (1, 3, 32, 32) and image.dtype == np.float32 for image in images)
    assert len(calibration_images(datamodule, images_per_category=4)) == 4 * len(datamodule.categories)


def _one_channel_input(op) -> bool:
    shape = op.input(0).get_partial_shape()
    return len(shape) == 4 and shape[1].is_static and shape[1].get_length() == 1


def test_ptq_quantizes_a_graph_but_not_its_anomaly_map_head(synthetic_root):
    """A small conv net with a one-channel smoothing head: INT8 in the body, the map's smoothing in floating point."""
    torch.manual_seed(0)
    smoothing = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False)  # stands for the anomaly map's Gaussian blur
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 1, 3, padding=1), smoothing
    ).eval()
    model = openvino.convert_model(net, example_input=torch.rand(1, 3, 64, 64), input=[1, 3, 64, 64])
    head = anomaly_map_operations(model)
    assert any(op.get_type_name() == "Convolution" and op.get_friendly_name() in head for op in model.get_ops())
    quantized = quantize_ptq(model, _datamodule(synthetic_root), images_per_category=2)
    fake_quantize = [op for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert fake_quantize  # the body is INT8
    assert not any(_one_channel_input(op) for op in fake_quantize)  # nothing clips the one-channel map
    images = torch.rand(1, 3, 64, 64)
    output = next(iter(openvino.Core().compile_model(quantized, "CPU", FP32)(images.numpy()).values()))
    with torch.no_grad():
        expected = net(images).numpy()
    assert output.shape == expected.shape
    assert np.corrcoef(output.ravel(), expected.ravel())[0, 1] > 0.95


class _EncoderDecoder(torch.nn.Module):
    """A frozen encoder, a learned decoder, their squared difference as the (one-channel) anomaly map."""

    def __init__(self, encoder_convolutions: int = 2) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, 8, 3, padding=1)]
        for _ in range(encoder_convolutions - 1):
            layers += [torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1)]
        self.encoder = torch.nn.Sequential(*layers)
        self.decoder = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.encoder.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)
        return (features - self.decoder(features)).pow(2).sum(1, keepdim=True)


def _quantized_convolutions(model) -> set[str]:
    """Names of the convolutions that get an INT8 input."""
    return {
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "Convolution" and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    }


def test_ptq_keeps_the_frozen_encoder_in_floating_point(synthetic_root):
    torch.manual_seed(0)
    net = _EncoderDecoder().eval()
    model = openvino.convert_model(net, example_input=torch.rand(1, 3, 32, 32), input=[1, 3, 32, 32])
    frozen = [f"self.{name}" for name, p in net.named_parameters() if not p.requires_grad]  # convert_model's names
    convolution = {  # weight name -> convolution name
        op.input_value(1).get_node().get_friendly_name(): op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "Convolution"
    }
    encoder = set(frozen_encoder_operations(model, frozen))
    assert {convolution["self.encoder.0.weight"], convolution["self.encoder.2.weight"]} <= encoder
    assert convolution["self.decoder.weight"] not in encoder
    datamodule = _datamodule(synthetic_root)
    kept = quantize_ptq(model.clone(), datamodule, images_per_category=2, frozen_parameters=frozen, float_encoder="all")
    assert _quantized_convolutions(kept) == {convolution["self.decoder.weight"]}
    everything = quantize_ptq(model.clone(), datamodule, images_per_category=2)
    assert _quantized_convolutions(everything) == set(convolution.values())
    # the float islands: the encoder's two convolutions when it stays in float, none when it is quantized too
    assert set(float_compute_operations(kept)) == {
        convolution["self.encoder.0.weight"],
        convolution["self.encoder.2.weight"],
    }
    assert float_compute_operations(everything) == []
    assert len(float_compute_operations(model)) == 3  # the fp32 graph: every convolution is float


def test_ptq_keeps_only_the_encoder_stem_in_floating_point_by_default(synthetic_root):
    """The package's default (``float_encoder="stem"``): the encoder's first two convolutions stay in float."""
    torch.manual_seed(0)
    net = _EncoderDecoder(encoder_convolutions=3).eval()
    model = openvino.convert_model(net, example_input=torch.rand(1, 3, 32, 32), input=[1, 3, 32, 32])
    frozen = [f"self.{name}" for name, p in net.named_parameters() if not p.requires_grad]
    convolution = {
        op.input_value(1).get_node().get_friendly_name(): op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "Convolution"
    }
    first, second, third = (convolution[f"self.encoder.{i}.weight"] for i in (0, 2, 4))
    stem = set(encoder_stem_operations(model, frozen))
    assert {first, second} <= stem
    assert not {third, convolution["self.decoder.weight"]} & stem
    datamodule = _datamodule(synthetic_root)
    quantized = quantize_ptq(model.clone(), datamodule, images_per_category=2, frozen_parameters=frozen)
    assert set(float_compute_operations(quantized)) == {first, second}
    assert _quantized_convolutions(quantized) == {third, convolution["self.decoder.weight"]}

    def kept_in_float(**options) -> set[str]:
        return set(quantization_settings(model, frozen_parameters=frozen, **options)["ignored_scope"].names)

    assert kept_in_float() == kept_in_float(float_encoder="stem", stem_convolutions=2)
    assert first in kept_in_float(stem_convolutions=1)
    assert not {second, third} & kept_in_float(stem_convolutions=1)
    assert {first, second, third} <= kept_in_float(float_encoder="all")
    assert not {first, second, third} & kept_in_float(float_encoder="none")
    with pytest.raises(ValueError, match="float_encoder"):
        quantize_ptq(model.clone(), datamodule, images_per_category=2, frozen_parameters=frozen, float_encoder="half")
    with pytest.raises(ValueError, match="stem_convolutions"):
        kept_in_float(stem_convolutions=0)


def test_weight_only_int8_needs_no_data():
    model = openvino.convert_model(torch.nn.Conv2d(3, 16, 3).eval(), example_input=torch.rand(1, 3, 8, 8))
    compressed = compress_openvino_model(model, "int8")
    types = {
        op.get_output_element_type(0).get_type_name() for op in compressed.get_ops() if op.get_type_name() == "Constant"
    }
    assert types & {"u8", "i8"}


def test_ptq_without_data_or_nncf_says_what_to_do(monkeypatch):
    model = openvino.convert_model(torch.nn.Conv2d(3, 1, 1).eval(), example_input=torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="needs calibration images: pass `datamodule`"):
        compress_openvino_model(model, "int8_ptq", datamodule=None)
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ModuleNotFoundError, match=r"anomalib-multiclass\[edge\]"):
        compress_openvino_model(model, "int8_ptq", datamodule=None)


def test_int8_export_carries_the_float_precision_our_inferencer_compiles_with(tmp_path, monkeypatch):
    """An INT8 export with ``int8_float_precision="f32"`` says INFERENCE_PRECISION_HINT=f32 in its IR;
    MultiClassOpenVINOInferencer applies it.

    OpenVINO's own ``compile_model`` ignores ``runtime_options`` for the CPU's precision (measured with 2026.4), so
    the inferencer passes them as configuration; a caller's ``config`` wins.
    """
    from anomalib.deploy import CompressionType

    import anomalib_multiclass.deploy.compress as compress
    from anomalib_multiclass.deploy.inferencer import MultiClassOpenVINOInferencer, runtime_options

    model = openvino.convert_model(torch.nn.Conv2d(3, 4, 3).eval(), example_input=torch.rand(1, 3, 16, 16))
    monkeypatch.setattr(compress, "compress_openvino_model", lambda model, *args, **kwargs: model)
    # every model leaves its float rest to the CPU's default (bf16 here: the faster, benchmarks/results/edge.md)
    assert all(model.int8_float_precision is None for model in (UniAD, MintAD, RLR, OmniAD, LGC))
    rlr = RLR.__new__(RLR)  # the method needs no built network
    rlr.int8_float_precision = "f32"  # what a user sets for fp32 float layers
    monkeypatch.setattr(RLR, "named_parameters", lambda self: iter(()), raising=False)
    quantized = rlr._compress_ov_model(model, CompressionType.INT8_PTQ)
    assert quantized.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str) == "f32"
    path = tmp_path / "model.xml"
    openvino.save_model(quantized, path)
    assert runtime_options(path) == {"INFERENCE_PRECISION_HINT": "f32"}
    inferencer = MultiClassOpenVINOInferencer(path, device="CPU")
    assert inferencer.model.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    chosen = MultiClassOpenVINOInferencer(path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f16"})
    assert chosen.model.get_property("INFERENCE_PRECISION_HINT") != openvino.Type.f32
    assert runtime_options(tmp_path / "none.xml") == {}


# --- slow: every model through anomalib's export ------------------------------------------------------------------
@pytest.fixture(scope="module", params=list(MODELS))
def trained(request, synthetic_root, pretrained_lite0, tmp_path_factory):
    from anomalib.engine import Engine

    del pretrained_lite0
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    cls, kwargs = MODELS[request.param]
    module = cls(**kwargs)
    root = tmp_path_factory.mktemp(f"int8_{request.param}")
    engine = Engine(
        max_epochs=EPOCHS.get(request.param, 2),
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(module, datamodule=_datamodule(synthetic_root))
    return engine, module.eval(), root


def _test_set(root):
    datamodule = _datamodule(root)
    datamodule.setup("test")
    data = datamodule.test_data
    images = torch.stack([data[i].image for i in range(len(data))])
    labels = np.array([int(data[i].gt_label) for i in range(len(data))])
    return images, labels, np.array(data.samples["category"])


def _run(path, images, config=None):
    compiled = openvino.Core().compile_model(str(path), "CPU", config or {})
    return {port.get_any_name(): value for port, value in compiled(images.numpy()).items()}


def _mean_category_auroc(scores, labels, categories):
    return np.mean([roc_auc_score(labels[categories == c], scores[categories == c]) for c in np.unique(categories)])


@pytest.mark.slow
def test_int8_ptq_export_of_every_model(trained, synthetic_root, tmp_path):
    from anomalib.deploy import CompressionType, ExportType

    from anomalib_multiclass.deploy import read_metadata
    from anomalib_multiclass.deploy.inferencer import runtime_options

    engine, module, _ = trained
    # raw scores and maps (post-processor normalisation off): normalised scores saturate at 0 and 1, and AUROC on
    # their ties says little; the normalised graph is exported by the command-line test below
    post = module.post_processor
    post.enable_normalization = post.enable_thresholding = False
    try:
        paths = {
            compression: engine.export(
                module,
                ExportType.OPENVINO,
                export_root=tmp_path / str(compression),
                input_size=(64, 64),
                compression_type=compression,
                datamodule=_datamodule(synthetic_root, calibration_images_per_category=4),
            )
            for compression in (None, CompressionType.INT8_PTQ)
        }
    finally:
        post.enable_normalization = post.enable_thresholding = True
    int8 = openvino.Core().read_model(str(paths[CompressionType.INT8_PTQ]))
    assert "FakeQuantize" in {op.get_type_name() for op in int8.get_ops()}
    name = type(module).__name__
    assert len(float_compute_operations(int8)) <= FLOAT_COMPUTE_OPS[name], float_compute_operations(int8)
    assert read_metadata(paths[CompressionType.INT8_PTQ]) == read_metadata(paths[None])
    hint = runtime_options(paths[CompressionType.INT8_PTQ]).get("INFERENCE_PRECISION_HINT")
    assert hint == type(module).int8_float_precision, hint  # None: the CPU's default
    assert read_metadata(paths[None])["category_names"] == ["brick", "coffee", "grass"]

    images, labels, categories = _test_set(synthetic_root)
    reference = _run(paths[None], images, FP32)
    quantized = _run(paths[CompressionType.INT8_PTQ], images)
    assert {name: value.shape for name, value in quantized.items()} == {
        name: value.shape for name, value in reference.items()
    }
    assert quantized["anomaly_map"].shape == (len(images), 1, 64, 64)
    fp32_scores, int8_scores = reference["pred_score"].ravel(), quantized["pred_score"].ravel()
    # INT8 ranks the images as fp32 does (8 per category: one swapped pair moves a category's AUROC by 0.07)
    assert spearmanr(fp32_scores, int8_scores).statistic > 0.8
    fp32_auroc = _mean_category_auroc(fp32_scores, labels, categories)
    int8_auroc = _mean_category_auroc(int8_scores, labels, categories)
    assert abs(int8_auroc - fp32_auroc) <= AUROC_TOLERANCE[name], (fp32_auroc, int8_auroc)


@pytest.fixture(scope="module")
def uniad(synthetic_root, pretrained_lite0, tmp_path_factory):
    """A tiny UniAD on real Lite0 features, trained by the engine (which leaves a checkpoint)."""
    from anomalib.engine import Engine

    del pretrained_lite0
    torch.manual_seed(0)
    module = UniAD(**MODELS["UniAD"][1])
    root = tmp_path_factory.mktemp("int8_uniad")
    engine = Engine(max_epochs=2, accelerator="cpu", default_root_dir=root, logger=False, enable_progress_bar=False)
    engine.fit(module, datamodule=_datamodule(synthetic_root))
    return engine, module.eval(), next(root.rglob("*.ckpt"))


@pytest.mark.slow
def test_int8_acq_keeps_the_per_category_metric_within_max_drop(uniad, synthetic_root, tmp_path):
    """Accuracy control (anomalib's INT8_ACQ) runs with NNCF 3 and judges the mean per-category image AUROC."""
    from anomalib.deploy import CompressionType

    engine, module, _ = uniad
    path = engine.export(
        module,
        "openvino",
        export_root=tmp_path / "acq",
        input_size=(64, 64),
        compression_type=CompressionType.INT8_ACQ,
        datamodule=_datamodule(synthetic_root, calibration_images_per_category=4),
        metric="AUROC",
        max_drop=0.05,
    )
    assert (path.parent / "multiclass_metadata.json").exists()
    fp32 = engine.export(module, "openvino", export_root=tmp_path / "fp32", input_size=(64, 64))
    images, labels, categories = _test_set(synthetic_root)  # the validation set (same as test here)
    fp32_auroc = _mean_category_auroc(_run(fp32, images, FP32)["pred_score"].ravel(), labels, categories)
    acq_auroc = _mean_category_auroc(_run(path, images)["pred_score"].ravel(), labels, categories)
    assert acq_auroc >= fp32_auroc - 0.05 - 1e-6, (fp32_auroc, acq_auroc)


@pytest.mark.slow
def test_cli_export_int8_ptq_with_a_calibration_share(uniad, synthetic_root, tmp_path):
    from tests.integration.test_cli import _anomalib, _model_args

    _, _, checkpoint = uniad
    _anomalib(
        "export",
        *_model_args("UniAD", MODELS["UniAD"][1]),
        "--export_type",
        "openvino",
        "--compression_type",
        "INT8_PTQ",
        "--data",
        "MultiClassFolder",
        "--data.root",
        str(synthetic_root),
        "--data.num_workers",
        "0",
        "--data.calibration_images_per_category",
        "2",
        "--ckpt_path",
        str(checkpoint),
        "--export_root",
        str(tmp_path),
        "--input_size",
        "[64,64]",
    )
    xml = next(tmp_path.rglob("model.xml"))
    assert "FakeQuantize" in {op.get_type_name() for op in openvino.Core().read_model(str(xml)).get_ops()}
    assert (xml.parent / "multiclass_metadata.json").exists()
