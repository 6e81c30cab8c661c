"""With real ImageNet features (EfficientNet-Lite0 shipped by a PyPI package), a short unified training
scores defective images above normal ones on generated multi-category data."""

import pytest
import torch
from anomalib.engine import Engine

from anomalib_multiclass.data import MultiClassFolder
from anomalib_multiclass.data.synthetic import make_synthetic_dataset
from anomalib_multiclass.models import RLR, MintAD, OmniAD, UniAD

COMMON = {
    "backbone": "tf_efficientnet_lite0",
    "pre_trained": True,
    "input_size": (128, 128),
    "hidden_dim": 64,
    "num_heads": 4,
    "ffn_dim": 128,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "lr": 1e-3,
}
MODELS = {
    "UniAD": (UniAD, {**COMMON, "neighbor_size": 3, "pool_size": 8}),
    "MintAD": (MintAD, COMMON),
    "RLR": (
        RLR,
        {
            "backbone": "tf_efficientnet_lite0",
            "layers": (1, 2, 3),
            "pre_trained": True,
            "input_size": (128, 128),
            "hidden_dims": (32, 64, 64),
            "windows": (7, 5, 3),
            "num_blocks": 1,
            "num_heads": 4,
            "lr": 3e-3,  # measured 0.82 I-AUROC / 0.85 P-AUROC (30 epochs, seed 0); 0.69 / 0.73 at lr 1e-3
        },
    ),
    "OmniAD": (
        OmniAD,
        {
            "backbone": "tf_efficientnet_lite0",  # the teacher: stages 1-3, 24/40/112 channels
            "layers": (1, 2, 3),
            "pre_trained": True,
            "input_size": (128, 128),
            "dims": (64, 112, 40, 24),
            "depths": (1, 1, 1, 1),
            "num_tokens": 16,
            "num_heads": 4,
            "lr": 1e-3,  # measured 0.90 I-AUROC / 0.89 P-AUROC (30 epochs, seed 0)
        },
    ),
}


@pytest.fixture(scope="module")
def texture_root(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("quality"),
        categories=["brick", "grass", "gravel"],
        n_train=16,
        n_test_good=5,
        n_test_defect=10,
        image_size=128,
        seed=1,
    )


# UniAD in the default suite; the other models with -m slow (each trains 30 epochs)
@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=() if name == "UniAD" else pytest.mark.slow) for name in MODELS]
)
def test_defects_score_above_normal_images(name, texture_root, pretrained_lite0, tmp_path):
    del pretrained_lite0  # installs the weights into the offline hub cache
    torch.manual_seed(0)
    cls, kwargs = MODELS[name]
    module = cls(**kwargs)
    datamodule = MultiClassFolder(root=texture_root, train_batch_size=16, eval_batch_size=16, num_workers=0)
    engine = Engine(
        max_epochs=30, accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False
    )
    engine.fit(module, datamodule=datamodule)
    engine.test(module, datamodule=datamodule, verbose=False)
    results = module.evaluator.results
    assert results["mean"]["image_AUROC"] > 0.65, results  # measured 0.74-0.79 (30 epochs, seed 0)
    assert results["mean"]["pixel_AUROC"] > 0.8, results
