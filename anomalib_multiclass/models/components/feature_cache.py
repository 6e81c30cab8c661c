"""Cache of frozen-backbone features, so that training epochs after the first skip the backbone.

Models whose backbone is frozen and whose training images are not randomly augmented recompute the same
features every epoch (UniAD trains 1000 epochs). The cache keeps the features of each training image,
keyed by its path, on the CPU, up to a memory bound, and hands them back in later epochs. Noise such as
feature jittering is applied after extraction, so training from the cache is exactly training without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

Features = torch.Tensor | list[torch.Tensor]


def _nbytes(features: Features) -> int:
    tensors = features if isinstance(features, list) else [features]
    return sum(t.numel() * t.element_size() for t in tensors)


class FrozenFeatureCache:
    """Per-image cache of frozen features.

    Args:
        max_bytes: Memory bound; once reached, new images are no longer cached (their features are
            recomputed every epoch) and a warning says so once. ``None``: no bound.
        enabled: Switch; when False ``get_or_compute`` always computes.
    """

    def __init__(self, max_bytes: int | None = 8 * 1024**3, enabled: bool = True) -> None:
        self.max_bytes = max_bytes
        self.enabled = enabled
        self._store: dict[str, Features] = {}
        self._bytes = 0
        self._warned = False
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self._bytes

    @property
    def is_full(self) -> bool:
        """Whether the memory bound was reached (some images' features are then recomputed every epoch)."""
        return self._warned

    def clear(self) -> None:
        """Drop every cached feature."""
        self._store.clear()
        self._bytes = 0

    def get_or_compute(
        self,
        keys: Sequence[str],
        images: torch.Tensor,
        compute: Callable[[torch.Tensor], Features],
    ) -> Features:
        """Features of ``images`` (identified by ``keys``) from the cache, or computed and stored.

        Returns what ``compute`` returns (a tensor or a list of tensors with the batch first), on the
        device of ``images``.
        """
        if not self.enabled or not keys:
            return compute(images)
        if all(key in self._store for key in keys):
            self.hits += len(keys)
            entries = [self._store[key] for key in keys]
            if isinstance(entries[0], list):
                return [torch.stack([e[i] for e in entries]).to(images.device) for i in range(len(entries[0]))]
            return torch.stack(entries).to(images.device)
        self.misses += len(keys)
        features = compute(images)
        detached = [f.detach() for f in features] if isinstance(features, list) else features.detach()
        for index, key in enumerate(keys):
            if key in self._store:
                continue
            entry = (
                [f[index].to("cpu", copy=True) for f in detached]
                if isinstance(detached, list)
                else detached[index].to("cpu", copy=True)
            )
            size = _nbytes(entry)
            if self.max_bytes is not None and self._bytes + size > self.max_bytes:
                if not self._warned:
                    logger.warning(
                        "Feature cache full (%.1f MiB of %.1f MiB): the remaining images' features are recomputed "
                        "every epoch. Raise `feature_cache_max_bytes` to cache them all.",
                        self._bytes / 2**20,
                        self.max_bytes / 2**20,
                    )
                    self._warned = True
                break
            self._store[key] = entry
            self._bytes += size
        return features
