"""Attention with neighbourhood masks, in an export-friendly form.

Masks are boolean ``(N, N)`` tensors over the ``N = h·w`` tokens of a feature map (row-major order),
built once from the map size and kept as buffers, never rebuilt in a forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def neighbor_mask(height: int, width: int, kernel: int | tuple[int, int]) -> torch.Tensor:
    """``mask[i, j]`` is True when token ``j`` lies in the ``kernel`` window centred on token ``i``.

    The window is clipped at the map border. UniAD's window of size k covers offsets ``-(k//2) .. k//2``.
    """
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= kh // 2
    near_cols = (cols[:, None] - cols[None, :]).abs() <= kw // 2
    return near_rows & near_cols


class MultiHeadAttention(nn.Module):
    """Multi-head attention with the parameters of ``nn.MultiheadAttention``, on ``scaled_dot_product_attention``.

    ``allowed`` is a boolean mask (True = may attend), broadcast over batch and heads. Tokens are batch-first
    ``(B, N, C)``. Writing it out keeps the ONNX/OpenVINO graph plain (no fused native MHA kernels).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            msg = f"dim {dim} is not divisible by num_heads {num_heads}"
            raise ValueError(msg)
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for layer in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        return x.reshape(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, Nq, C)``, ``(B, Nk, C)``, ``(B, Nk, C)`` -> ``(B, Nq, C)``."""
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        batch, _, tokens, head_dim = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * head_dim))
