"""Gathering what each DDP rank saw, so that metrics and statistics do not depend on the number of processes."""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """All ranks' records on rank 0, each image once; ``None`` on the other ranks; ``records`` in one process.

    Each record is one batch: tensors with the batch first and the lists ``category`` and ``image_path``. The
    distributed sampler pads the last shard by repeating images; an image (category and path) already seen is
    dropped. Images without a path cannot be told apart: they are all kept, and a log line says so.
    """
    if not distributed():
        return records
    gathered: list[list[dict[str, Any]]] | None = (
        [[] for _ in range(torch.distributed.get_world_size())] if torch.distributed.get_rank() == 0 else None
    )
    torch.distributed.gather_object(records, gathered, dst=0)
    if gathered is None:
        return None
    seen: set[tuple[str, str]] = set()
    kept: list[dict[str, Any]] = []
    unnamed = 0
    for record in (r for rank_records in gathered for r in rank_records):
        keep = []
        for i, (category, path) in enumerate(zip(record["category"], record["image_path"], strict=True)):
            if not path:
                unnamed += 1
                keep.append(i)
            elif (category, path) not in seen:
                seen.add((category, path))
                keep.append(i)
        if len(keep) == len(record["category"]):
            kept.append(record)
        elif keep:
            kept.append(select(record, keep))
    if unnamed:
        logger.info("%d gathered images have no path: padding duplicates among them cannot be dropped.", unnamed)
    return kept


def select(record: dict[str, Any], index: list[int]) -> dict[str, Any]:
    """The images at ``index`` of a record (tensors indexed, lists picked)."""
    positions = torch.tensor(index, dtype=torch.long)
    return {
        name: value[positions] if isinstance(value, torch.Tensor) else [value[i] for i in index]
        for name, value in record.items()
    }


def broadcast(payload: Any) -> Any:
    """Rank 0's ``payload`` on every rank (the payload itself in one process)."""
    if not distributed():
        return payload
    box = [payload]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _not_distributed() -> bool:
    return False


def on_this_process(metric: Any) -> Any:
    """``metric`` computed on this process's values alone, never synchronised across processes.

    For metrics rank 0 computes on values it has already gathered from every process: a synchronising
    ``compute`` would wait for the other ranks, which never call it (a deadlock). Through torchmetrics'
    ``distributed_available_fn``, which every metric has (``sync_on_compute`` is not accepted by every
    anomalib metric's constructor, and set afterwards it is not read by ``compute``).
    """
    from torchmetrics import Metric

    for part in metric.modules():  # metrics built on other metrics (F1Max on a precision-recall curve) too
        if isinstance(part, Metric):
            part.distributed_available_fn = _not_distributed
    return metric
