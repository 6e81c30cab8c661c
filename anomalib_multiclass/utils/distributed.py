"""Collectives for statistics that must not depend on the number of processes (DDP).

Fixed-size state is summed with all-reduces of tensors; the few per-image numbers are all-gathered as tensors;
only names (categories, image paths) travel as Python objects. Every rank ends with the same values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sized
from typing import Any, cast

import torch

logger = logging.getLogger(__name__)


def distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _device() -> torch.device:
    """Where the process group's collectives take tensors (NCCL: this process's GPU)."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over every process (``op``: sum, min or max); the tensor itself in one process."""
    if not distributed():
        return tensor
    moved = tensor.to(_device())
    torch.distributed.all_reduce(moved, op=getattr(torch.distributed.ReduceOp, _OPS[op]))
    return moved.to(tensor.device)


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every process's ``rows`` (2-D, any number of rows each) stacked in rank order, on every process."""
    if not distributed():
        return rows
    world = torch.distributed.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long, device=_device()) for _ in range(world)]
    torch.distributed.all_gather(counts, torch.tensor([len(rows)], device=_device()))
    longest = max(int(c) for c in counts)
    padded = torch.zeros(longest, rows.shape[1], dtype=rows.dtype, device=_device())
    padded[: len(rows)] = rows.to(_device())
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[: int(count)] for part, count in zip(parts, counts, strict=True)]).to(rows.device)


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (small picklable objects: names, paths), in rank order; ``[value]`` alone."""
    if not distributed():
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def real_samples(trainer: Any, stage: str) -> int | None:
    """How many of this process's samples of ``stage`` are real, not the distributed sampler's padding.

    torch's ``DistributedSampler`` (which Lightning puts in under DDP) evens the shards by repeating the first
    samples at the end of its list; rank ``r`` takes positions ``r, r + W, r + 2W, ...``, so its samples at
    positions ``>= len(dataset)`` are the repeats. ``None`` where nothing is repeated or the sampler is unknown
    (a log line says so when several processes run).
    """
    if trainer is None or not distributed():
        return None
    from torch.utils.data import DistributedSampler

    loaders = getattr(trainer, {"validate": "val_dataloaders", "test": "test_dataloaders"}.get(stage, ""), None)
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if len(loaders) == 1 else None
    sampler = getattr(loaders, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(getattr(loaders, "batch_sampler", None), "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        logger.info("No DistributedSampler found for %s: every image each process sees is counted.", stage)
        return None
    if type(sampler).__name__.startswith("Unrepeated") or sampler.drop_last:
        return None
    size = len(cast(Sized, sampler.dataset))
    return max(0, math.ceil((size - sampler.rank) / sampler.num_replicas))


def _not_distributed() -> bool:
    return False


def on_this_process(metric: Any) -> Any:
    """``metric`` computed on this process's values alone, never synchronised across processes.

    For metrics computed on values every process already holds: a synchronising ``compute`` would wait for
    collectives the other ranks never enter (a deadlock). Through torchmetrics' ``distributed_available_fn``, which
    every metric has (``sync_on_compute`` is not accepted by every anomalib metric's constructor, and set afterwards
    it is not read by ``compute``).
    """
    from torchmetrics import Metric

    for part in metric.modules():  # metrics built on other metrics (F1Max on a precision-recall curve) too
        if isinstance(part, Metric):
            part.distributed_available_fn = _not_distributed
    return metric
