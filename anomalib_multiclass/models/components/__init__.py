"""Pieces shared by several models: base mixin, attention with neighbour masks, jitter, extraction, cache."""
