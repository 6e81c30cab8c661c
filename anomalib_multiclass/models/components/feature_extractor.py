"""Frozen timm backbones: built offline from a local weights file if asked, aligned and concatenated (UniAD's neck)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from torch import nn


class MissingBackboneWeightsError(RuntimeError):
    """The pretrained backbone weights could not be downloaded or read."""


def timm_feature_extractor(
    backbone: str,
    layers: Sequence[int | str],
    pre_trained: bool = True,
    weights: str | Path | None = None,
) -> TimmFeatureExtractor:
    """Anomalib's ``TimmFeatureExtractor`` with weights from timm's download, or from ``weights`` (a local file).

    Args:
        backbone: timm model name.
        layers: timm out-indices or layer names of the stages.
        pre_trained: Download the ImageNet weights through timm (ignored when ``weights`` is given).
        weights: Local file with the backbone's weights (a timm ``model.safetensors`` / ``pytorch_model.bin``).
    """
    try:
        extractor = TimmFeatureExtractor(backbone, layers=list(layers), pre_trained=pre_trained and weights is None)
    except Exception as error:
        if pre_trained and weights is None and _is_download_error(error):
            raise MissingBackboneWeightsError(missing_weights_message(backbone, error)) from error
        if isinstance(error, (IndexError, KeyError, ValueError)):
            raise ValueError(layers_message(backbone, layers, error)) from error
        raise
    if weights is not None:
        load_backbone_weights(extractor.feature_extractor, weights)
    return extractor


def layers_message(backbone: str, layers: Sequence[int | str], error: BaseException) -> str:
    """Which stages ``backbone`` has, for a ``layers`` value timm cannot select (its own error is an index error)."""
    import timm

    try:
        stages = len(timm.create_model(backbone, features_only=True, pretrained=False).feature_info)
    except Exception:  # the message stays useful without the count
        stages = None
    known = f"stages 0 to {stages - 1}" if stages else "fewer stages"
    return (
        f"layers={list(layers)} does not fit backbone {backbone!r}, which has {known} ({error!r}). Choose layers "
        f'among those (command line: --model.layers "[...]"), or another backbone.'
    )


def load_backbone_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a local weights file into a timm (``features_only``) model through timm's pretrained machinery.

    timm loads feature extractors non-strictly (their heads are dropped), which would let a file of another model
    through unnoticed; here every tensor of ``model`` must be in the file with its shape.
    """
    from timm.models import load_pretrained, load_state_dict

    path = Path(weights).expanduser()
    if not path.is_file():
        msg = f"Backbone weights file {path} does not exist. Pass the path of a timm weights file (backbone_weights)."
        raise FileNotFoundError(msg)
    saved = load_state_dict(str(path))
    expected = model.state_dict()
    missing = [key for key in expected if key not in saved]
    wrong = [
        f"{key} {tuple(saved[key].shape)}"
        for key in expected
        if key in saved and saved[key].shape != expected[key].shape
    ]
    if missing or wrong:
        architecture = model.pretrained_cfg.get("architecture", type(model).__name__)
        msg = (
            f"Backbone weights file {path} does not fit timm's {architecture!r}: "
            f"{len(missing)} of its {len(expected)} tensors missing (e.g. {missing[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]}). Use the weights of that very model "
            f"(e.g. from the Hugging Face hub: {model.pretrained_cfg.get('hf_hub_id') or 'its timm page'})."
        )
        raise ValueError(msg)
    config = {key: value for key, value in model.pretrained_cfg.items() if key not in {"source", "state_dict"}}
    load_pretrained(model, pretrained_cfg={**config, "file": str(path)}, num_classes=0, strict=False)


def missing_weights_message(backbone: str, error: BaseException) -> str:
    """What failed, where the weights come from, and the two ways to provide them offline."""
    config = timm.models.get_pretrained_cfg(backbone)
    hub_id = getattr(config, "hf_hub_id", None)
    source = f"the Hugging Face hub ({hub_id})" if hub_id else f"{getattr(config, 'url', None) or 'timm'}"
    download = (
        f"run `hf download {hub_id}` (older huggingface_hub: `huggingface-cli download {hub_id}`) where there is "
        "a network, copy the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub) to this machine and set "
        "HF_HUB_OFFLINE=1"
        if hub_id
        else "download the file where there is a network"
    )
    reason = f"{type(error).__name__}: {str(error).splitlines()[0]}" if str(error) else type(error).__name__
    return (
        f"The pretrained weights of the backbone {backbone!r} could not be loaded: timm takes them from {source}, "
        f"which this machine cannot reach ({reason}). "
        f"Either {download}, or pass the weights file itself: `backbone_weights=<path>` "
        "(command line: `--model.backbone_weights <path>`). A model restored from a checkpoint has its backbone "
        "weights already: `pre_trained=False` (`--model.pre_trained false`) skips the download."
    )


def _is_download_error(error: BaseException) -> bool:
    """Whether ``error`` (or an error it came from) is a failed download: network, hub cache, or file I/O."""
    seen: BaseException | None = error
    while seen is not None:
        module = type(seen).__module__
        if isinstance(seen, (OSError, ConnectionError)) or module.startswith(("huggingface_hub", "requests", "urllib")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class FrozenBackbone(nn.Module):
    """A frozen timm backbone (anomalib's ``TimmFeatureExtractor``) that stays in eval mode in training too.

    The one owner of "frozen": no gradients, batch-norm statistics fixed whatever the parent's mode. Its
    ``forward`` gives the selected stages' maps.

    Args:
        backbone: timm model name.
        layers: timm out-indices or layer names of the stages.
        pre_trained: Load ImageNet weights through timm.
        weights: Local file with the backbone's weights instead of timm's download.
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[int | str],
        pre_trained: bool = True,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.extractor = timm_feature_extractor(backbone, layers, pre_trained=pre_trained, weights=weights).eval()
        self.extractor.requires_grad_(False)
        self.layers = list(layers)
        self.out_dims = [int(d) for d in self.extractor.out_dims]
        self.reductions = [int(r) for r in self.extractor.reductions]

    def train(self, mode: bool = True) -> FrozenBackbone:
        """The backbone stays in eval mode (frozen batch-norm statistics) whatever the parent's mode."""
        super().train(mode)
        self.extractor.eval()
        return self

    @torch.no_grad()
    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) -> the stage maps, each at its own resolution."""
        return list(self.extractor(images).values())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """The stage maps (subclasses may combine them)."""
        return self.stage_features(images)


class MultiStageFeatureExtractor(FrozenBackbone):
    """A frozen timm backbone whose stages are resized to one map size and concatenated.

    The stages are timm ``features_only`` out-indices (for EfficientNets index 0..3 are the stages at
    strides 2/4/8/16: UniAD's ``outlayers [1,2,3,4]``). Each map is bilinearly resized to the map of
    ``align_to`` (default: the deepest stage used), as UniAD's MFCN neck does (its ``UpsamplingBilinear2d``
    has ``align_corners=True``), and the maps are concatenated along channels.

    Args:
        backbone: timm model name, e.g. ``"tf_efficientnet_b4.aa_in1k"``.
        layers: timm out-indices of the stages to use.
        pre_trained: Load ImageNet weights through timm.
        weights: Local file with the backbone's weights instead of timm's download.
        align_to: Index into ``layers`` of the stage whose map size the others are resized to.
        truncate: Drop the backbone blocks after the deepest stage used (timm's ``features_only`` EfficientNets
            keep and run all of them); the features are identical, the frozen model smaller and faster.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (0, 1, 2, 3),
        pre_trained: bool = True,
        align_to: int = -1,
        truncate: bool = False,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__(backbone, layers, pre_trained=pre_trained, weights=weights)
        if truncate:
            _truncate_after_last_stage(self.extractor.feature_extractor)
        self.align_to = align_to

    @property
    def num_features(self) -> int:
        """Channels of the concatenated map."""
        return sum(self.out_dims)

    @property
    def stride(self) -> int:
        """Stride of the concatenated map relative to the input image."""
        return self.reductions[self.align_to]

    def grid(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Feature-map size for ``input_size`` images; the size must be a multiple of the stride."""
        if input_size[0] % self.stride or input_size[1] % self.stride:
            msg = f"input_size {tuple(input_size)} must be a multiple of the backbone stride {self.stride}."
            raise ValueError(msg)
        return input_size[0] // self.stride, input_size[1] // self.stride

    def grids(self, input_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Map size of every stage for ``input_size`` images (a multiple of the deepest stride)."""
        deepest = max(self.reductions)
        if input_size[0] % deepest or input_size[1] % deepest:
            msg = f"input_size {tuple(input_size)} must be a multiple of the backbone stride {deepest}."
            raise ValueError(msg)
        return [(input_size[0] // r, input_size[1] // r) for r in self.reductions]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> aligned concatenated features (B, C, H/stride, W/stride)."""
        features = self.stage_features(images)
        size = features[self.align_to].shape[-2:]
        aligned = [
            f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=True)
            for f in features
        ]
        return torch.cat(aligned, dim=1)


def _truncate_after_last_stage(model: nn.Module) -> None:
    """Remove the ``blocks`` after the deepest feature stage of a timm ``features_only`` EfficientNet/MobileNet."""
    blocks = getattr(model, "blocks", None)
    info = getattr(model, "feature_info", None)
    if not isinstance(blocks, nn.Sequential) or info is None:
        return  # other families (ResNets: FeatureListNet) already stop at the last stage used
    last = max(int(name.split(".")[1]) for name in info.module_name() if name.startswith("blocks."))
    model.blocks = blocks[: last + 1]
