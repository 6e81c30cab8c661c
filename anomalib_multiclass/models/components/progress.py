"""One plain progress line per training epoch, for runs whose output is not a terminal.

Lightning's rich progress bar redraws one line in place and draws nothing while stdout is a file or a pipe (under
``nohup``, in CI, ``> train.log``): a long training then prints nothing between the model summary and the final
table. :class:`EpochProgressPrinter` prints, at the end of every training epoch, a line such as::

    [UniAD] epoch 3/40: loss 0.04512, 12.3 s (validation 2.1 s), 58.8 images/s, feature cache 3629 images (0.72 GiB),
    100 % hits

Our models add it in ``configure_callbacks`` when stdout is not a terminal or when the trainer has no progress bar
(:func:`epoch_progress_callbacks`). It prints to stdout, flushed, as the per-category table is printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_multiclass.utils.console import show


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} B"


class EpochProgressPrinter(Callback):
    """Print epoch, mean training loss, seconds, images/s and the frozen-feature cache state after every epoch.

    The loss is the batch-size-weighted mean of the training steps' ``loss``; images/s counts the training
    images over the training part of the epoch (validation is timed apart). The cache is the module's
    ``feature_cache`` (:class:`FrozenFeatureCache`) when it has one. Under DDP the global-zero rank prints its
    own loss and the images of all ranks (its count times the world size).

    Args:
        stream: Where to print; default ``sys.stdout`` at the time of printing.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._reset(0.0)

    def _reset(self, start: float) -> None:
        self._epoch_start = start
        self._train_end = start
        self._validation_seconds = 0.0
        self._validation_start: float | None = None
        self._images = 0
        self._loss_sum: torch.Tensor | None = None
        self._cache_counts = (0, 0)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the epoch's clock and counters."""
        del trainer
        self._reset(time.perf_counter())
        cache = getattr(pl_module, "feature_cache", None)
        if cache is not None:
            self._cache_counts = (cache.hits, cache.misses)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Add the step's loss (kept on its device: no synchronisation per step) and its images."""
        del trainer, pl_module, batch_idx
        images = getattr(batch, "image", None)
        size = len(images) if images is not None else 1
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            weighted = loss.detach().float() * size
            self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._images += size
        self._train_end = time.perf_counter()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Time the validation run inside the epoch apart from training."""
        del pl_module
        if not trainer.sanity_checking:
            self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Add the validation run's seconds."""
        del trainer, pl_module
        if self._validation_start is not None:
            self._validation_seconds += time.perf_counter() - self._validation_start
            self._validation_start = None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the epoch's line (global-zero rank only)."""
        if trainer.is_global_zero:
            line = self.format_line(trainer, pl_module)
            if self.stream is None:
                show(line)
            else:
                print(line, file=self.stream, flush=True)

    def format_line(self, trainer: Trainer, pl_module: LightningModule) -> str:
        """The epoch's progress line."""
        seconds = time.perf_counter() - self._epoch_start
        train_seconds = max(self._train_end - self._epoch_start, 1e-9)
        images = self._images * max(1, trainer.world_size)
        max_epochs = trainer.max_epochs
        epoch = f"epoch {trainer.current_epoch + 1}" + (f"/{max_epochs}" if max_epochs and max_epochs > 0 else "")
        loss = "n/a" if self._loss_sum is None or not self._images else f"{float(self._loss_sum) / self._images:.4g}"
        timing = f"{_seconds(seconds)} s"
        if self._validation_seconds:
            timing += f" (validation {_seconds(self._validation_seconds)} s)"
        parts = [f"[{type(pl_module).__name__}] {epoch}: loss {loss}", timing, f"{images / train_seconds:.1f} images/s"]
        cache = getattr(pl_module, "feature_cache", None)
        if cache is not None:
            parts.append(self._cache_state(cache))
        return ", ".join(parts)

    def _cache_state(self, cache: Any) -> str:
        if not cache.enabled:
            return "feature cache off"
        hits = cache.hits - self._cache_counts[0]
        misses = cache.misses - self._cache_counts[1]
        held = f"{len(cache)} images ({_size(cache.nbytes)})"
        if hits + misses == 0:
            state = f"feature cache unused, {held}"
        elif hits == 0:  # first epoch: every batch ran the backbone and was stored
            state = f"feature cache filling, {held}"
        else:
            state = f"feature cache {held}, {100 * hits / (hits + misses):.0f} % hits"
        return state + (", full" if cache.is_full else "")


def wants_epoch_lines(trainer: Trainer | None, stdout: TextIO | None = None) -> bool:
    """Whether plain epoch lines are needed: stdout is not a terminal, or the trainer draws no progress bar."""
    stdout = stdout or sys.stdout
    is_terminal = bool(getattr(stdout, "isatty", lambda: False)())
    return not is_terminal or (trainer is not None and trainer.progress_bar_callback is None)


def epoch_progress_callbacks(trainer: Trainer | None) -> list[Callback]:
    """``[EpochProgressPrinter()]`` when :func:`wants_epoch_lines` and the trainer has none yet, else ``[]``."""
    if trainer is not None and any(isinstance(c, EpochProgressPrinter) for c in trainer.callbacks):
        return []  # the user's own (a model callback would replace it)
    return [EpochProgressPrinter()] if wants_epoch_lines(trainer) else []


def _seconds(value: float) -> str:
    """Tenths of a second, or two significant digits under one second (a fast epoch is not "0.0 s")."""
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"
