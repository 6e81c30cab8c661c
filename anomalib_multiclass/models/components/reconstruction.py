"""UniAD's feature-reconstruction transformer (input projection, post-norm encoder and query decoder)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from anomalib_multiclass.models.components.attention import neighbor_mask
from anomalib_multiclass.models.components.transformer import (
    LearnedPositionEmbedding,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    xavier_init_linears,
)


class ReconstructionTransformer(nn.Module):
    """UniAD's reconstruction transformer: feature tokens in, reconstructed feature tokens out.

    Shared by UniAD (neighbour masks, layer-wise queries) and MINT-AD (no mask, external INR query).

    Args:
        in_channels: Channels of the frozen features (272 for EfficientNet-b4 stages 1-4).
        feature_size: (h, w) of the feature map (14 × 14 at 224 px).
        hidden_dim: Transformer width (256).
        num_heads: Attention heads (8).
        ffn_dim: Feed-forward width (1024).
        num_encoder_layers: Encoder depth (4).
        num_decoder_layers: Decoder depth (4).
        dropout: Dropout (0.1).
        neighbor_size: Side k of the masked k × k neighbourhood (7); ``None`` or 0 disables the mask.
        neighbor_mask_in: Where the mask applies: any of ``"encoder"``, ``"decoder_memory"`` (the query's
            attention to the encoder output) and ``"decoder_previous"`` (its attention to the previous layer).
        layerwise_query: One learned query per decoder layer (UniAD); if False the layers share one.
        external_query: No learned query at all: ``forward`` takes the query map (MINT-AD's INR output).
    """

    def __init__(
        self,
        in_channels: int,
        feature_size: tuple[int, int] = (14, 14),
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dropout: float = 0.1,
        neighbor_size: int | None = 7,
        neighbor_mask_in: Sequence[str] = ("encoder", "decoder_memory", "decoder_previous"),
        layerwise_query: bool = True,
        external_query: bool = False,
    ) -> None:
        super().__init__()
        height, width = feature_size
        tokens = height * width
        self.feature_size = (height, width)
        self.input_proj = nn.Linear(in_channels, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, in_channels)
        self.pos_embed = LearnedPositionEmbedding(height, width, hidden_dim)
        self.encoder = nn.ModuleList(
            TransformerEncoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            TransformerDecoderLayer(
                hidden_dim,
                num_heads,
                ffn_dim,
                dropout,
                num_queries=0 if external_query else tokens if layerwise_query or i == 0 else 0,
            )
            for i in range(num_decoder_layers)
        )
        self.layerwise_query = layerwise_query
        self.external_query = external_query
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        unknown = set(neighbor_mask_in) - {"encoder", "decoder_memory", "decoder_previous"}
        if unknown:
            msg = f"Unknown neighbor_mask_in entries {sorted(unknown)}."
            raise ValueError(msg)
        self.neighbor_mask_in = tuple(neighbor_mask_in)
        # True = may attend: everything outside the token's k × k neighbourhood (itself included).
        check_neighbor_size(neighbor_size, (height, width))
        allowed = ~neighbor_mask(height, width, neighbor_size) if neighbor_size else torch.ones(tokens, tokens).bool()
        self.register_buffer("allowed", allowed, persistent=False)
        xavier_init_linears(self)  # the official code's initializer

    def _mask(self, where: str) -> torch.Tensor | None:
        return self.allowed if where in self.neighbor_mask_in else None

    def forward(self, tokens: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, C_in) -> reconstructed (B, N, C_in); ``query`` (B, N, hidden) when ``external_query``."""
        if self.external_query and query is None:
            msg = "This reconstruction network takes an external query map: pass `query`."
            raise ValueError(msg)
        pos = self.pos_embed()
        memory = self.input_proj(tokens)
        for layer in self.encoder:
            memory = layer(memory, pos, self._mask("encoder"))
        if not self.external_query and not self.layerwise_query:
            query = self.decoder[0].learned_query.expand(tokens.shape[0], -1, -1)
        out = memory
        for layer in self.decoder:
            out = layer(
                out,
                memory,
                pos,
                query=query,
                memory_allowed=self._mask("decoder_memory"),
                previous_allowed=self._mask("decoder_previous"),
            )
        return self.output_proj(self.decoder_norm(out))


def check_neighbor_size(neighbor_size: int | None, grid: tuple[int, int]) -> None:
    """Refuse a neighbourhood that leaves some token nothing to attend to on this token grid (or is negative).

    A window at least as large as the grid masks every token for the tokens at its centre: their attention has no
    key left, and the mask then either yields NaN or is dropped (masking nothing). Neither is UniAD's model.
    """
    if not neighbor_size:
        return
    height, width = grid
    largest = next(
        (k for k in range(max(height, width) * 2 + 1, 0, -1) if (~neighbor_mask(height, width, k)).any(dim=1).all()),
        0,
    )
    if neighbor_size < 0 or neighbor_size > largest:
        usable = f"1 to {largest}" if largest else "none: the grid is too small for a neighbourhood mask"
        msg = (
            f"neighbor_size={neighbor_size} does not fit the {height} x {width} token grid (input_size / the "
            f"backbone's stride): a window that large masks every token for some tokens. Usable sizes: {usable}; "
            "0 turns the mask off, a larger input_size gives a larger grid (command line: --model.neighbor_size)."
        )
        raise ValueError(msg)
