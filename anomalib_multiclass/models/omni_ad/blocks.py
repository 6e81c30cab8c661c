"""Omni-AD's decoder: Omni-blocks, patch expansion, and the four-stage decoder built from them.

An Omni-block has a global branch (attentions with learnable tokens) and a local branch (depthwise convolutions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


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


def _check_block_sizes(dim: int, num_tokens: int, num_heads: int) -> None:
    """Refuse a token count that is not a perfect square (Up's grid) or a width the heads do not divide."""
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens:
        msg = f"The number of learnable tokens must be a perfect square (Up lays them on a grid), got {num_tokens}."
        raise ValueError(msg)
    if dim % num_heads:
        msg = f"Width {dim} is not divisible by {num_heads} heads."
        raise ValueError(msg)


def _up_index(feature_size: tuple[int, ...], grid: int) -> torch.Tensor:
    """For each of the h x w positions, the token of the grid x grid layout nearest-upsampling gives it (Up)."""
    height, width = feature_size
    rows = torch.div(torch.arange(height) * grid, height, rounding_mode="floor")
    cols = torch.div(torch.arange(width) * grid, width, rounding_mode="floor")
    return (rows[:, None] * grid + cols[None, :]).flatten()


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
        _check_block_sizes(dim, num_tokens, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        self.feature_size = tuple(feature_size)
        self.official_code_behaviour = official_code_behaviour
        self.double_input_residual = double_input_residual
        self._build_global_branch(map_seed)
        self._build_local_branch()
        self.fc1 = nn.Linear(dim, dim)  # fusion MLP
        self.fc2 = nn.Linear(dim, dim)
        self._init_weights()

    def _build_global_branch(self, map_seed: int) -> None:
        """Q̄, S̄, the two attentions' projections and biases, their output maps, and the Up index."""
        dim, num_tokens, num_heads = self.dim, self.num_tokens, self.num_heads
        self.query_tokens = nn.Parameter(torch.zeros(1, num_tokens, dim))  # Q̄
        self.kv_tokens = nn.Parameter(torch.zeros(1, num_tokens, dim))  # S̄
        self.q = nn.Linear(dim, dim)
        self.kv_x = nn.Linear(dim, 2 * dim)
        self.q_2 = nn.Linear(dim, dim)
        self.kv_y = nn.Linear(dim, 2 * dim)
        self.pe2 = nn.Parameter(torch.zeros(1, num_heads, num_tokens, 1))  # added after MHA-1's softmax
        self.pe1 = nn.Parameter(torch.zeros(1, num_heads, 1, num_tokens))  # added after MHA-2's softmax
        if self.official_code_behaviour:
            self.proj1 = self.proj2 = None
            generator = torch.Generator().manual_seed(map_seed)
            for name in ("proj1", "proj2"):
                for index, tensor in enumerate(_default_linear_weights(dim, generator)):
                    self.register_buffer(f"_{name}_eval_{index}", tensor, persistent=False)
        else:
            self.proj1 = OutputMap(dim)
            self.proj2 = OutputMap(dim)
        self.register_buffer("up_index", _up_index(self.feature_size, math.isqrt(num_tokens)), persistent=False)

    def _build_local_branch(self) -> None:
        """Depthwise 3 x 3 and 5 x 5 paths and their 1 x 1 fusion (eqs. 2-4)."""
        self.local3 = DepthwiseBranch(self.dim, 3)
        self.local5 = DepthwiseBranch(self.dim, 5)
        self.fuse = nn.Conv2d(2 * self.dim, self.dim, 1)
        self.fuse_norm = nn.InstanceNorm2d(self.dim)

    def _init_weights(self) -> None:
        """Truncated-normal linear weights, zero biases; Q̄ and S̄ truncated-normal too unless in official mode."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        if not self.official_code_behaviour:
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
