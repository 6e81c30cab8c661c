"""Post-norm transformer layers of UniAD's reconstruction network (shared with the models built on it)."""

from __future__ import annotations

import torch
from torch import nn

from anomalib_multiclass.models.components.attention import MultiHeadAttention


@torch.no_grad()
def xavier_init_linears(module: nn.Module) -> None:
    """The official UniAD initialisation of a reconstruction network (``initializer: xavier_uniform``).

    Every ``nn.Linear`` (input/output projections, attention outputs, FFNs) gets a xavier-uniform weight and a
    zero bias; the attention in-projections keep ``nn.MultiheadAttention``'s packed xavier initialisation, which
    the official code never re-initialises (its packed ``in_proj_weight`` is a parameter, not a ``Linear``).
    """
    packed = {id(layer) for m in module.modules() if isinstance(m, MultiHeadAttention) for layer in m.in_projections}
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and id(layer) not in packed:
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class FeedForward(nn.Module):
    """Linear -> ReLU -> dropout -> Linear, as in DETR/UniAD layers."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer; the positional embedding is added to queries and keys, not values."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """``src`` (B, N, C), ``pos`` (1, N, C), ``allowed`` (N, N) or None."""
        q = k = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, allowed)))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: query attends to the encoder memory, then to ``previous``, then FFN.

    UniAD's layer-wise query decoder: each layer has its own learnable query (``num_queries`` > 0), which
    first attends to the encoder output (``memory``) and then to the previous decoder layer's output
    (the encoder output for the first layer). A model that supplies its own query map (MINT-AD's INR)
    builds the layer with ``num_queries=0`` and passes ``query``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_queries: int = 0) -> None:
        super().__init__()
        self.learned_query = nn.Parameter(torch.empty(1, num_queries, dim)) if num_queries else None
        if self.learned_query is not None:
            nn.init.normal_(self.learned_query)  # nn.Embedding's default initialisation, as UniAD
        self.memory_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.previous_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        previous: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query: torch.Tensor | None = None,
        memory_allowed: torch.Tensor | None = None,
        previous_allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All token tensors are (B, N, C); ``query`` defaults to the layer's learned query."""
        if query is None:
            if self.learned_query is None:
                msg = "This decoder layer has no learned query: pass `query`."
                raise ValueError(msg)
            query = self.learned_query.expand(memory.shape[0], -1, -1)
        tgt = self.memory_attn(query + pos, memory + pos, memory, memory_allowed)
        tgt = self.norm1(query + self.dropout1(tgt))
        tgt = self.norm2(tgt + self.dropout2(self.previous_attn(tgt + pos, previous + pos, previous, previous_allowed)))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class LearnedPositionEmbedding(nn.Module):
    """Learned 2-D positional embedding: half the channels from the column, half from the row (DETR/UniAD)."""

    def __init__(self, height: int, width: int, dim: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.row_embed = nn.Parameter(torch.empty(height, dim // 2))
        self.col_embed = nn.Parameter(torch.empty(width, dim - dim // 2))
        nn.init.uniform_(self.row_embed)
        nn.init.uniform_(self.col_embed)

    def forward(self) -> torch.Tensor:
        """(1, H·W, C), row-major."""
        cols = self.col_embed.unsqueeze(0).expand(self.height, -1, -1)
        rows = self.row_embed.unsqueeze(1).expand(-1, self.width, -1)
        return torch.cat([cols, rows], dim=-1).reshape(1, self.height * self.width, -1)
