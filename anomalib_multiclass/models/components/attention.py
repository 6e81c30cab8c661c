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


def window_index(height: int, width: int, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices of the ``kernel`` × ``kernel`` window around every token, and which of them exist.

    Returns ``index`` (N, k²) and ``valid`` (N, k²) for the ``N = h·w`` tokens (row-major). Offsets that fall
    outside the map are clipped away: their ``valid`` entry is False and their index points at token 0.
    ``valid`` row ``i`` selects exactly the tokens of ``neighbor_mask(height, width, kernel)[i]``.
    """
    offsets = torch.arange(kernel) - kernel // 2
    rows = torch.arange(height).repeat_interleave(width)[:, None, None] + offsets[None, :, None]
    cols = torch.arange(width).repeat(height)[:, None, None] + offsets[None, None, :]
    valid = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    index = (rows * width + cols).where(valid, torch.zeros((), dtype=torch.long))
    return index.flatten(1), valid.flatten(1)


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
        self.reset_parameters()

    @property
    def in_projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """The query, key and value projections (``nn.MultiheadAttention``'s packed ``in_proj``)."""
        return self.q_proj, self.k_proj, self.v_proj

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation, which the official UniAD and RLR code inherit.

        Xavier-uniform on the packed 3d × d in-projection (bound √(6 / 4d), not the √(6 / 2d) of three separate
        d × d matrices), zero in-projection and output biases, PyTorch's default for the output weight.
        """
        dim = self.q_proj.in_features
        packed = nn.init.xavier_uniform_(torch.empty(3 * dim, dim))
        for layer, weight in zip(self.in_projections, packed.chunk(3), strict=True):
            layer.weight.copy_(weight)
            nn.init.zeros_(layer.bias)
        self.out_proj.reset_parameters()
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
        dense: bool = False,
    ) -> torch.Tensor:
        """``(B, Nq, C)``, ``(B|1, Nk, C)``, ``(B|1, Nk, C)`` -> ``(B, Nq, C)``.

        ``dense=True`` computes the textbook form (``softmax(QKᵀ/√d + M) V`` with an additive −∞ mask, the
        N × N weights materialised); it is the reference the fused path is tested against and the "plain"
        form of the benchmarks.
        """
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        batch = q.shape[0]
        k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        if dense:
            logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
            if allowed is not None:
                logits = logits + torch.zeros_like(allowed, dtype=logits.dtype).masked_fill(~allowed, float("-inf"))
            weights = F.dropout(logits.softmax(dim=-1), self.dropout, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
            )
        _, _, tokens, head_dim = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * head_dim))


class LocalWindowAttention(MultiHeadAttention):
    """Attention restricted to a k × k window around each query, computed on the window only: O(N·k²).

    Query token ``i`` of a map attends to the key/value tokens of the *same* map inside the window centred
    on ``i`` (clipped at the border). The keys and values of each window are gathered, so neither the N × N
    logits nor the N × N weights exist; the result equals :class:`MultiHeadAttention` with
    ``allowed = neighbor_mask(h, w, k)``. Keys and values may have batch 1 (a learnt reference shared by
    the batch): they are then projected and gathered once for the whole batch.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__(dim, num_heads, dropout=0.0)

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        index: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """``query`` (B, N, C), ``key``/``value`` (B|1, N, C), ``index``/``valid`` (N, k²) from :func:`window_index`."""
        q = self._heads(self.q_proj(query))  # (B, H, N, d)
        k = self._heads(self.k_proj(key))[:, :, index]  # (Bk, H, N, k², d)
        v = self._heads(self.v_proj(value))[:, :, index]
        # Shared keys (batch 1): einsum batches over (head, token) and multiplies the whole batch at once.
        shared = "hnkd" if k.shape[0] == 1 else "bhnkd"
        logits = torch.einsum(f"bhnd,{shared}->bhnk", q, k[0] if k.shape[0] == 1 else k)
        logits = (logits / q.shape[-1] ** 0.5).masked_fill(~valid, float("-inf"))
        weights = logits.softmax(dim=-1)
        shared = "hnkd" if v.shape[0] == 1 else "bhnkd"
        out = torch.einsum(f"bhnk,{shared}->bhnd", weights, v[0] if v.shape[0] == 1 else v)
        batch, _, tokens, head_dim = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * head_dim))
