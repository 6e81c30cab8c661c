"""Omni-AD (Quan et al., ICME 2025) in plain PyTorch: a reverse-distillation decoder of Omni-blocks.

A frozen ImageNet CNN (ResNet-34 stages 1-3) gives three maps e1, e2, e3; an RD-style neck fuses them into one
map z at stride 32 with twice the deepest width; z is jittered in training and decoded by four stages of
Omni-blocks (global branch: two attentions with learnable tokens; local branch: depthwise convolutions), with a
2x patch expansion before stages 2-4. The last three stage outputs reconstruct e3, e2, e1; the anomaly map is the
mean over scales of 1 - cosine similarity, upsampled to the image and Gaussian-smoothed (sigma 4).

Export notes: channels-last tensors handled with reshape/permute, tokens broadcast with ``expand``, the
nearest-neighbour token upsampling is an index buffer built from ``input_size``, nothing random in eval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from anomalib.models.components import GaussianBlur2d
from torch import nn

from anomalib_multiclass.models.components.base import MultiClassInferenceBatch
from anomalib_multiclass.models.components.feature_extractor import timm_feature_extractor
from anomalib_multiclass.models.components.jitter import feature_jitter


class FrozenTeacher(nn.Module):
    """A timm CNN whose selected stages are the reconstruction targets; frozen and always in eval mode.

    Args:
        backbone: timm model name (Omni-AD: ``resnet34.bt_in1k``, the torchvision-trained weights that the
            official code's timm 0.8 loads for ``resnet34``).
        layers: Three stages (timm out-indices or layer names), shallowest first, at strides 4/8/16.
        pre_trained: Load ImageNet weights through timm.
        weights: Local file with the teacher's weights (timm format), loaded instead of the download.
    """

    def __init__(
        self,
        backbone: str = "resnet34.bt_in1k",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        self.extractor = timm_feature_extractor(backbone, layers, pre_trained=pre_trained, weights=weights).eval()
        for parameter in self.extractor.parameters():
            parameter.requires_grad_(False)
        self.out_dims = [int(d) for d in self.extractor.out_dims]
        self.reductions = [int(r) for r in self.extractor.reductions]
        if len(self.out_dims) != 3:
            msg = f"Omni-AD reconstructs three teacher stages, got {len(self.out_dims)} layers: {list(layers)}."
            raise ValueError(msg)
        if [r // self.reductions[0] for r in self.reductions] != [1, 2, 4]:
            msg = f"The teacher stages must have strides s, 2s, 4s (the neck halves twice); got {self.reductions}."
            raise ValueError(msg)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode (frozen batch-norm statistics) whatever the parent's mode."""
        super().train(mode)
        self.extractor.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) -> [e1, e2, e3], each (B, C_k, H / s_k, W / s_k)."""
        return list(self.extractor(images).values())


# --------------------------------------------------------------------------------------------------- neck


def _cbr(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False) -> nn.Sequential:
    """Conv + BatchNorm + ReLU (the neck's "CBR" unit)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with the stride, 1x1 to 4x planes; BN after each; projection shortcut)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x))


class FusionNeck(nn.Module):
    """RD / MambaAD-style neck: fuse three stages (strides s, 2s, 4s) into one map at 8s with ``out_channels``.

    a = CBR3x3/2(e1); b = CBR1x1(e2) + a; c = CBR3x3/2(b) + CBR1x1(e3); d = CBR1x1(c); z = 3 bottlenecks (the first
    with stride 2). Widths follow the teacher: for ResNet-34 (64, 128, 256) -> 512 x H/32 x W/32.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_bottlenecks: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in in_channels)
        if out_channels % Bottleneck.expansion:
            msg = f"The neck width {out_channels} must be a multiple of {Bottleneck.expansion} (bottleneck expansion)."
            raise ValueError(msg)
        self.down1 = _cbr(c1, c2, 3, stride=2)
        self.lateral2 = _cbr(c2, c2, 1, bias=True)
        self.down2 = _cbr(c2, c3, 3, stride=2)
        self.lateral3 = _cbr(c3, c3, 1, bias=True)
        self.mix = _cbr(c3, c3, 1, bias=True)
        planes = out_channels // Bottleneck.expansion
        blocks = [Bottleneck(c3, planes, stride=2)]
        blocks += [Bottleneck(out_channels, planes) for _ in range(num_bottlenecks - 1)]
        self.bottleneck = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """[e1, e2, e3] -> z (B, out_channels, h3 / 2, w3 / 2)."""
        e1, e2, e3 = features
        b = self.lateral2(e2) + self.down1(e1)
        c = self.down2(b) + self.lateral3(e3)
        return self.bottleneck(self.mix(c))


# --------------------------------------------------------------------------------------------------- block


def attention_with_bias(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, explicit: bool = False
) -> torch.Tensor:
    """(softmax(Q Kᵀ / √d) + bias) V for a bias added AFTER the softmax (Omni-AD's pe1 / pe2).

    The bias term is linear in V, so (softmax(.) + P) V = SDPA(Q, K, V) + P V: the softmax part goes through
    ``scaled_dot_product_attention`` (fused kernels, no stored weights), the bias part is a small matmul
    (P is (1, H, L, 1) or (1, H, 1, S)). ``explicit=True`` computes the weights literally (tests compare both).

    Shapes: query (B, H, L, d), key/value (B, H, S, d), bias broadcastable to (B, H, L, S) -> (B, H, L, d).
    """
    if explicit:
        scores = query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5
        return (scores.softmax(dim=-1) + bias) @ value
    out = F.scaled_dot_product_attention(query, key, value)
    if bias.shape[-1] == 1:  # (1, H, L, 1): each query row gets bias * sum over keys of V
        return out + bias * value.sum(dim=-2, keepdim=True)
    return out + bias @ value  # (1, H, 1, S): one weighted sum of V shared by all queries


def _instance_norm_tokens(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm (no affine) of channels-last tokens (B, N, D): per sample and channel, over the N positions."""
    mean = x.mean(dim=1, keepdim=True)
    centred = x - mean
    return centred * torch.rsqrt(centred.pow(2).mean(dim=1, keepdim=True) + eps)


class OutputMap(nn.Module):
    """Attention output map W^O, as the released code shapes it: Linear(D, D) -> SiLU -> Linear(D, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        return self.fc2(F.silu(self.fc1(x)))


def _default_linear_weights(
    dim: int, generator: torch.Generator | None = None, like: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """W1, b1, W2, b2 of two freshly built ``nn.Linear(dim, dim)`` (PyTorch's default init: U(±1/√dim))."""
    bound = 1.0 / math.sqrt(dim)
    kwargs = {} if like is None else {"device": like.device, "dtype": like.dtype}
    shapes = [(dim, dim), (dim,), (dim, dim), (dim,)]
    return [(torch.rand(shape, generator=generator, **kwargs) * 2 - 1) * bound for shape in shapes]


class DepthwiseBranch(nn.Module):
    """One local path: depthwise k x k -> IN -> SiLU -> pointwise 1x1 -> IN -> SiLU (eqs. 2-3)."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.pointwise = nn.Conv2d(dim, dim, 1)
        self.norm = nn.InstanceNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, D, h, w)."""
        x = F.silu(self.norm(self.depthwise(x)))
        return F.silu(self.norm(self.pointwise(x)))


class OmniBlock(nn.Module):
    """Omni-block: global branch (learnable-query and learnable-key/value attentions) + local depthwise branch.

    Global (eq. 1): F1 = MHA(Q̄, X, X) over T learnable query tokens; Y1 = Up(F1) + X, where Up lays the T tokens
    on a √T x √T grid and upsamples it (nearest) to the h x w map; F2 = MHA(Y1, S̄, S̄) with T learnable key/value
    tokens. Both attentions add a learnt per-head bias after the softmax (pe2 over queries, pe1 over keys).
    Local (eqs. 2-4): F5 = fuse([DW3(X), DW5(X)]). Output (eq. 5): X + MLP(G + F5) with G = F2 + Y1 (+ X again).

    Args:
        dim: Token width D.
        feature_size: (h, w) of the map the block runs on (fixes the token upsampling index).
        num_tokens: T, a perfect square (64).
        num_heads: Attention heads (8).
        official_code_behaviour: Reproduce the released code: Q̄ and S̄ start at zero and the output maps are not
            parameters: a fresh default-initialised Linear-SiLU-Linear every training call, a fixed draw of the same
            distribution (seeded, non-persistent buffers) in eval so that scores stay deterministic and exportable.
        double_input_residual: G = F2 + Y1 + X (the released code adds X twice); False gives the paper's G = F2 + Y1.
        map_seed: Seed of the fixed eval-time output maps in official mode.
    """

    def __init__(
        self,
        dim: int,
        feature_size: tuple[int, int],
        num_tokens: int = 64,
        num_heads: int = 8,
        official_code_behaviour: bool = False,
        double_input_residual: bool = True,
        map_seed: int = 0,
    ) -> None:
        super().__init__()
        grid = math.isqrt(num_tokens)
        if grid * grid != num_tokens:
            msg = f"The number of learnable tokens must be a perfect square (Up lays them on a grid), got {num_tokens}."
            raise ValueError(msg)
        if dim % num_heads:
            msg = f"Width {dim} is not divisible by {num_heads} heads."
            raise ValueError(msg)
        self.dim = dim
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        self.feature_size = tuple(feature_size)
        self.official_code_behaviour = official_code_behaviour
        self.double_input_residual = double_input_residual

        # global branch
        self.query_tokens = nn.Parameter(torch.zeros(1, num_tokens, dim))  # Q̄
        self.kv_tokens = nn.Parameter(torch.zeros(1, num_tokens, dim))  # S̄
        self.q = nn.Linear(dim, dim)
        self.kv_x = nn.Linear(dim, 2 * dim)
        self.q_2 = nn.Linear(dim, dim)
        self.kv_y = nn.Linear(dim, 2 * dim)
        self.pe2 = nn.Parameter(torch.zeros(1, num_heads, num_tokens, 1))  # added after MHA-1's softmax
        self.pe1 = nn.Parameter(torch.zeros(1, num_heads, 1, num_tokens))  # added after MHA-2's softmax
        if official_code_behaviour:
            self.proj1 = self.proj2 = None
            generator = torch.Generator().manual_seed(map_seed)
            for name in ("proj1", "proj2"):
                for index, tensor in enumerate(_default_linear_weights(dim, generator)):
                    self.register_buffer(f"_{name}_eval_{index}", tensor, persistent=False)
        else:
            self.proj1 = OutputMap(dim)
            self.proj2 = OutputMap(dim)
        height, width = self.feature_size
        rows = torch.div(torch.arange(height) * grid, height, rounding_mode="floor")
        cols = torch.div(torch.arange(width) * grid, width, rounding_mode="floor")
        self.register_buffer("up_index", (rows[:, None] * grid + cols[None, :]).flatten(), persistent=False)

        # local branch
        self.local3 = DepthwiseBranch(dim, 3)
        self.local5 = DepthwiseBranch(dim, 5)
        self.fuse = nn.Conv2d(2 * dim, dim, 1)
        self.fuse_norm = nn.InstanceNorm2d(dim)

        # fusion MLP
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        if not official_code_behaviour:
            nn.init.trunc_normal_(self.query_tokens, std=0.02)
            nn.init.trunc_normal_(self.kv_tokens, std=0.02)

    def _output_map(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """W^O of one attention: registered (default), or the released code's unregistered random map."""
        module = getattr(self, name)
        if module is not None:
            return module(x)
        if self.training:
            w1, b1, w2, b2 = _default_linear_weights(self.dim, like=x)
        else:
            w1, b1, w2, b2 = (getattr(self, f"_{name}_eval_{i}") for i in range(4))
        return F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, D / H)."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, D / H) -> (B, L, D)."""
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.dim)

    def global_branch(self, x: torch.Tensor, explicit: bool = False) -> torch.Tensor:
        """Tokens X (B, N, D) -> G (B, N, D)."""
        batch = x.shape[0]
        # MHA-1: T learnable queries read the input
        query = self._heads(self.q(self.query_tokens)).expand(batch, -1, -1, -1)
        key, value = self.kv_x(x).reshape(batch, -1, 2, self.dim).unbind(dim=2)
        f1 = self._merge(attention_with_bias(query, self._heads(key), self._heads(value), self.pe2, explicit))
        f1 = self._output_map("proj1", f1)  # (B, T, D)
        y1 = f1.index_select(1, self.up_index) + x  # Up(F1): nearest upsampling of the √T x √T token grid
        # MHA-2: the input reads T learnable keys/values
        key, value = self.kv_y(self.kv_tokens).reshape(1, -1, 2, self.dim).unbind(dim=2)
        key = self._heads(key).expand(batch, -1, -1, -1)
        value = self._heads(value).expand(batch, -1, -1, -1)
        f2 = self._merge(attention_with_bias(self._heads(self.q_2(y1)), key, value, self.pe1, explicit))
        f2 = self._output_map("proj2", f2)
        return f2 + y1 + x if self.double_input_residual else f2 + y1

    def local_branch(self, x: torch.Tensor) -> torch.Tensor:
        """Map X (B, D, h, w) -> F5 (B, D, h, w)."""
        fused = self.fuse(torch.cat([self.local3(x), self.local5(x)], dim=1))
        return F.silu(self.fuse_norm(fused))

    def forward(self, x: torch.Tensor, explicit_attention: bool = False) -> torch.Tensor:
        """Channels-last map (B, h, w, D) -> (B, h, w, D)."""
        batch, height, width, dim = x.shape
        if (height, width) != self.feature_size:
            msg = f"Block built for a {self.feature_size} map, got {height}x{width}."
            raise ValueError(msg)
        tokens = x.reshape(batch, height * width, dim)
        g = self.global_branch(tokens, explicit_attention)
        f5 = self.local_branch(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        out = self.fc2(F.silu(_instance_norm_tokens(self.fc1(g + f5)))) + tokens
        return out.reshape(batch, height, width, dim)


class PatchExpand(nn.Module):
    """2x upsampling of a channels-last map (the official PatchExpand, not ``pixel_shuffle``'s channel order).

    Linear(D_in -> 4D, no bias); each pixel's 4D channels are laid out as a 2 x 2 patch (p1, p2, c with c fastest:
    pixel (2i + p1, 2j + p2) takes channels [(2 p1 + p2) D, (2 p1 + p2 + 1) D)); then LayerNorm(D).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.expand = nn.Linear(in_dim, 4 * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D_in) -> (B, 2h, 2w, D)."""
        batch, height, width, _ = x.shape
        x = self.expand(x).reshape(batch, height, width, 2, 2, self.out_dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, self.out_dim)
        return self.norm(x)


class OmniDecoder(nn.Module):
    """Four stages of Omni-blocks (a PatchExpand before stages 2-4); returns every stage's map, channels-first.

    Args:
        dims: Width of each stage (paper: 512, 256, 128, 64).
        depths: Blocks per stage (paper: 3, 9, 9, 7).
        feature_size: (h, w) of the first stage's map; each later stage doubles it.
        num_tokens, num_heads, official_code_behaviour, double_input_residual: see :class:`OmniBlock`.
    """

    def __init__(
        self,
        dims: Sequence[int],
        depths: Sequence[int],
        feature_size: tuple[int, int],
        num_tokens: int = 64,
        num_heads: int = 8,
        official_code_behaviour: bool = False,
        double_input_residual: bool = True,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        self.upsample = nn.ModuleList()
        height, width = feature_size
        seed = 0
        for index, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if index:
                self.upsample.append(PatchExpand(dims[index - 1], dim))
                height, width = 2 * height, 2 * width
            else:
                self.upsample.append(nn.Identity())
            blocks = []
            for _ in range(depth):
                blocks.append(
                    OmniBlock(
                        dim,
                        (height, width),
                        num_tokens=num_tokens,
                        num_heads=num_heads,
                        official_code_behaviour=official_code_behaviour,
                        double_input_residual=double_input_residual,
                        map_seed=seed,
                    )
                )
                seed += 1
            self.stages.append(nn.ModuleList(blocks))
        for module in self.upsample.modules():  # decoder Linear layers: trunc-normal 0.02 (LayerNorm keeps 1 / 0)
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)

    def forward(self, z: torch.Tensor, explicit_attention: bool = False) -> list[torch.Tensor]:
        """Neck output z (B, D0, h, w) -> [stage 0, stage 1, stage 2, stage 3] maps (B, D_i, 2^i h, 2^i w)."""
        x = z.permute(0, 2, 3, 1)
        outputs = []
        for upsample, blocks in zip(self.upsample, self.stages, strict=True):
            x = upsample(x)
            for block in blocks:
                x = block(x, explicit_attention)
            outputs.append(x.permute(0, 3, 1, 2))
        return outputs


# --------------------------------------------------------------------------------------------------- model


class OmniADModel(nn.Module):
    """Omni-AD: frozen teacher -> fusion neck -> jitter (training) -> Omni-block decoder -> 1 - cos anomaly map.

    Args:
        backbone: timm teacher (``resnet34.bt_in1k``); any CNN whose three ``layers`` have strides s, 2s, 4s.
        layers: The three teacher stages (ResNet: ``layer1``-``layer3``; EfficientNet: out-indices 1, 2, 3).
        pre_trained: ImageNet weights for the teacher.
        backbone_weights: Local timm weights file of the backbone, used instead of the download.
        input_size: Image size the model runs at (a multiple of 8 x the first stage's stride: 32 for ResNets).
        dims: Decoder widths; ``None`` derives them from the teacher widths (C1, C2, C3) as (2 C3, C3, C2, C1)
            (ResNet-34: 512, 256, 128, 64). The last three must equal C3, C2, C1 (they reconstruct e3, e2, e1);
            the first is also the neck's output width.
        depths: Omni-blocks per decoder stage (3, 9, 9, 7).
        num_tokens: Learnable tokens T per block (64, a perfect square).
        num_heads: Attention heads (8).
        jitter_scale: Feature-jitter α on the neck output (20); 0 disables it.
        jitter_prob: Probability of jittering a training batch (1.0).
        blur_sigma: σ of the Gaussian smoothing of the anomaly map (4; 33-tap kernel).
        official_code_behaviour: Zero-initialised tokens and unregistered random output maps, as released
            (see :class:`OmniBlock`). Default off: trained output maps, trunc-normal tokens.
        double_input_residual: Add the block input twice to the global branch (released code); False: paper.
    """

    def __init__(
        self,
        backbone: str = "resnet34.bt_in1k",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: tuple[int, int] = (256, 256),
        dims: Sequence[int] | None = None,
        depths: Sequence[int] = (3, 9, 9, 7),
        num_tokens: int = 64,
        num_heads: int = 8,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        blur_sigma: float = 4.0,
        official_code_behaviour: bool = False,
        double_input_residual: bool = True,
    ) -> None:
        super().__init__()
        self.teacher = FrozenTeacher(backbone, layers, pre_trained=pre_trained, weights=backbone_weights)
        c1, c2, c3 = self.teacher.out_dims
        dims = [2 * c3, c3, c2, c1] if dims is None else [int(d) for d in dims]
        if len(dims) != 4 or len(depths) != 4:
            msg = f"Omni-AD's decoder has four stages: got dims {dims}, depths {list(depths)}."
            raise ValueError(msg)
        if dims[1:] != [c3, c2, c1]:
            msg = f"Decoder stages 2-4 reconstruct the teacher stages: their widths must be {[c3, c2, c1]}, got {dims}."
            raise ValueError(msg)
        self.input_size = tuple(int(s) for s in input_size)
        stride = 8 * self.teacher.reductions[0]
        if self.input_size[0] % stride or self.input_size[1] % stride:
            msg = f"input_size {self.input_size} must be a multiple of {stride} (the neck's output stride)."
            raise ValueError(msg)
        self.feature_sizes = [(self.input_size[0] // r, self.input_size[1] // r) for r in self.teacher.reductions]
        self.dims = dims
        self.neck = FusionNeck(self.teacher.out_dims, dims[0])
        self.decoder = OmniDecoder(
            dims,
            depths,
            (self.input_size[0] // stride, self.input_size[1] // stride),
            num_tokens=num_tokens,
            num_heads=num_heads,
            official_code_behaviour=official_code_behaviour,
            double_input_residual=double_input_residual,
        )
        self.jitter_scale = jitter_scale
        self.jitter_prob = jitter_prob
        kernel = 2 * math.ceil(4 * blur_sigma) + 1  # scipy's truncate=4 support: 33 taps for σ = 4
        self.blur = GaussianBlur2d(sigma=blur_sigma, channels=1, kernel_size=kernel)

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen part: images (B, 3, H, W) -> [e1, e2, e3] teacher maps (the decoder's targets)."""
        return self.teacher(images)

    def reconstruct(self, features: Sequence[torch.Tensor], explicit_attention: bool = False) -> list[torch.Tensor]:
        """[e1, e2, e3] -> their reconstructions [d1, d2, d3] (same shapes); jitter in training only."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        if sizes != self.feature_sizes:
            msg = (
                f"Teacher maps {sizes} do not match the model's {self.feature_sizes}: the model was built for "
                f"{self.input_size[0]}x{self.input_size[1]} images."
            )
            raise ValueError(msg)
        z = self.neck(features)
        if self.training:
            z = feature_jitter(z, self.jitter_scale, self.jitter_prob, dim=1)
        stages = self.decoder(z, explicit_attention)
        return [stages[3], stages[2], stages[1]]

    def anomaly_map(
        self, features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor], size: torch.Size
    ) -> torch.Tensor:
        """Mean over scales of 1 - cosine (bilinear, align_corners) then Gaussian blur (σ 4): (B, 1, H, W)."""
        maps = [
            F.interpolate(
                1 - F.cosine_similarity(feature, reconstruction, dim=1).unsqueeze(1),
                size=size,
                mode="bilinear",
                align_corners=True,
            )
            for feature, reconstruction in zip(features, reconstructions, strict=True)
        ]
        return self.blur(torch.stack(maps).mean(dim=0))

    def forward(
        self,
        images: torch.Tensor,
        features: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, list[torch.Tensor]] | MultiClassInferenceBatch:
        """Training: teacher maps and reconstructions (for the loss). Eval: anomaly map and image score.

        ``features`` (the teacher maps, e.g. from the frozen-feature cache) skip the teacher. The returned anomaly
        map is the smoothed one (as anomalib's Reverse Distillation and the official evaluation); the image score
        is its maximum.
        """
        if features is None:
            features = self.extract_features(images)
        features = list(features)
        reconstructions = self.reconstruct(features)
        if self.training:
            return {"features": features, "reconstructions": reconstructions}
        anomaly_map = self.anomaly_map(features, reconstructions, images.shape[-2:])
        return MultiClassInferenceBatch(pred_score=anomaly_map.flatten(1).amax(dim=1), anomaly_map=anomaly_map)
