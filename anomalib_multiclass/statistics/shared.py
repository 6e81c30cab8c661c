"""One set of validation statistics per pass, shared by every callback that needs it (evaluator, post-processor).

Both fold each validation batch into the same :class:`StreamingStatistics` (once: folds are keyed by batch) and
read it at the epoch's end, after one reduction across processes: the maps are histogrammed once, not twice.
"""

from __future__ import annotations

from typing import Any

from anomalib_multiclass.statistics.binned import DEFAULT_BINS
from anomalib_multiclass.statistics.streaming import StreamingStatistics
from anomalib_multiclass.utils.distributed import real_samples

_ATTRIBUTE = "_multiclass_validation_statistics"


def validation_statistics(
    trainer: Any, pl_module: Any, num_bins: int = DEFAULT_BINS, regions: bool = False
) -> StreamingStatistics:
    """The statistics of the validation pass that is starting, created by the first callback to ask.

    Called from ``on_validation_epoch_start``: a set that has not folded anything yet belongs to this pass; one
    that has (or was reduced) belongs to an earlier pass and is replaced. ``regions``: the caller needs AUPRO.
    """
    current = getattr(pl_module, _ATTRIBUTE, None) if pl_module is not None else None
    if isinstance(current, StreamingStatistics) and not current.reduced and current.seen == 0:
        current.regions = current.regions or regions
        return current
    statistics = StreamingStatistics(num_bins, regions=regions, keep_paths=False)
    statistics.sample_limit = real_samples(trainer, "validate")
    if pl_module is not None:
        object.__setattr__(pl_module, _ATTRIBUTE, statistics)  # a plain attribute, not a registered submodule
    return statistics


def batch_key(args: tuple[Any, ...], kwargs: dict[str, Any], outputs: Any) -> Any:
    """A validation batch's identity from Lightning's hook arguments (``batch, batch_idx, dataloader_idx``)."""
    batch_idx = kwargs.get("batch_idx", args[1] if len(args) > 1 else None)
    dataloader_idx = kwargs.get("dataloader_idx", args[2] if len(args) > 2 else 0)
    return (dataloader_idx, batch_idx) if batch_idx is not None else id(outputs)
