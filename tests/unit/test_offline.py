"""Offline use: backbone weights from a local file, and a missing-weights error that says why (issue 16)."""

import huggingface_hub.constants
import pytest
import timm
import torch

from anomalib_multiclass.models import LGC, RLR, MintAD, OmniAD, UniAD
from anomalib_multiclass.models.components.feature_extractor import MissingBackboneWeightsError
from tests.conftest import TINY_LGC, TINY_OMNI_AD, TINY_RLR, TINY_UNIAD

TINY_MINT_AD = {k: v for k, v in TINY_UNIAD.items() if k not in {"neighbor_size", "pool_size", "layers"}}
MODELS = {
    "UniAD": (UniAD, TINY_UNIAD),
    "MintAD": (MintAD, {**TINY_MINT_AD, "classifier_classes": 3}),
    "RLR": (RLR, TINY_RLR),
    "OmniAD": (OmniAD, TINY_OMNI_AD),
    "LGC": (LGC, TINY_LGC),
}
DEFAULT_HUB_IDS = {
    "UniAD": "timm/tf_efficientnet_b4.aa_in1k",
    "MintAD": "timm/tf_efficientnet_b4.aa_in1k",
    "RLR": "timm/tf_efficientnet_b6.aa_in1k",
    "OmniAD": "timm/resnet34.bt_in1k",
    "LGC": "timm/wide_resnet50_2.racm_in1k",
}


def _backbone(module):
    """The timm feature model inside a model of ours (whatever the model calls its frozen part)."""
    model = module.model
    extractor = getattr(model, "feature_extractor", None) or getattr(model, "teacher", None) or model.encoder
    return getattr(extractor, "extractor", extractor).feature_extractor


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """No network and nothing cached: what an air-gapped machine sees."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", list(MODELS))
def test_default_backbone_offline_names_weights_source_and_argument(name, empty_hub_cache):
    cls, _ = MODELS[name]
    kwargs = {"classifier_classes": 3} if name == "MintAD" else {}
    with pytest.raises(MissingBackboneWeightsError) as error:
        cls(**kwargs)
    message = str(error.value)
    assert DEFAULT_HUB_IDS[name] in message, "where the weights come from"
    assert f"hf download {DEFAULT_HUB_IDS[name]}" in message
    assert "--model.backbone_weights" in message, "the argument that takes a file"
    assert "LocalEntryNotFoundError" in message, "the cause, not buried"


@pytest.mark.parametrize("name", list(MODELS))
def test_backbone_weights_from_a_local_file(name, tmp_path, empty_hub_cache):
    cls, kwargs = MODELS[name]
    reference = _backbone(cls(**kwargs))
    architecture = reference.pretrained_cfg["architecture"]
    torch.manual_seed(1)
    weights = timm.create_model(architecture, pretrained=False).state_dict()
    torch.save(weights, tmp_path / "weights.pth")
    loaded = _backbone(cls(**{**kwargs, "backbone_weights": str(tmp_path / "weights.pth")}))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_local_file_gives_the_hub_weights(pretrained_lite0, monkeypatch):
    # the same real ImageNet weights, once from timm's hub cache and once from the file given as backbone_weights
    kwargs = {**TINY_UNIAD, "pre_trained": True}
    from_hub = _backbone(UniAD(**kwargs)).eval()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", "/nonexistent")
    from_file = _backbone(UniAD(**kwargs, backbone_weights=str(pretrained_lite0))).eval()
    images = torch.rand(2, 3, 64, 64)
    for a, b in zip(from_hub(images), from_file(images), strict=True):
        torch.testing.assert_close(a, b)


def test_weights_of_another_model_are_refused(pretrained_lite0):
    with pytest.raises(ValueError, match=r"does not fit timm's 'resnet18'.*tensors missing"):
        LGC(**TINY_LGC, backbone_weights=str(pretrained_lite0))
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth"):
        UniAD(**TINY_UNIAD, backbone_weights="nothing.pth")


def test_cli_offline_error_and_backbone_weights_argument(pretrained_lite0, synthetic_root, empty_hub_cache):
    # the plain command's form, in-process: the cause is in the message, and --model.backbone_weights takes a file
    from anomalib.cli import AnomalibCLI

    data = ["--data", "MultiClassFolder", "--data.root", str(synthetic_root), "--data.num_workers", "0"]
    with pytest.raises(ValueError, match=r"(?s)tf_efficientnet_b4.*--model\.backbone_weights"):
        AnomalibCLI(["fit", "--model", "UniAD", *data], run=False)
    cli = AnomalibCLI(
        ["fit", "--model", "UniAD", "--model.backbone", "tf_efficientnet_lite0", "--model.input_size", "[64,64]",
         "--model.neighbor_size", "3", "--model.backbone_weights", str(pretrained_lite0), *data],
        run=False,
    )  # fmt: skip
    assert cli.model.hparams.backbone_weights == str(pretrained_lite0)


def test_load_from_checkpoint_needs_no_backbone_weights(tmp_path, empty_hub_cache):
    # a checkpoint holds the backbone: restoring it on an air-gapped machine fetches nothing
    from lightning.pytorch import Trainer

    model = UniAD(**TINY_UNIAD)
    model.hparams.pre_trained = True  # as trained on a machine with network
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = UniAD.load_from_checkpoint(tmp_path / "model.ckpt")
    assert torch.equal(
        _backbone(restored).state_dict()["conv_stem.weight"], _backbone(model).state_dict()["conv_stem.weight"]
    )
