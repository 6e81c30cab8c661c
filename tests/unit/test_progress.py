"""Training with stdout redirected (nohup, CI, a log file) prints one plain line per epoch."""

from __future__ import annotations

import io
import re

import pytest
import torch

from anomalib_multiclass.models import UniAD
from anomalib_multiclass.models.components.progress import (
    EpochProgressPrinter,
    epoch_progress_callbacks,
    wants_epoch_lines,
)
from tests.conftest import TINY_UNIAD

NUMBER = r"[0-9.]+(?:e[-+]?[0-9]+)?"
LINE = re.compile(
    rf"^\[(?P<model>\w+)\] epoch (?P<epoch>\d+)/(?P<epochs>\d+): loss (?P<loss>{NUMBER}), (?P<seconds>{NUMBER}) s"
    rf"(?: \(validation {NUMBER} s\))?, (?P<speed>{NUMBER}) images/s(?:, (?P<cache>feature cache .*))?$"
)


LINE_WITHOUT_TOTAL = re.compile(
    rf"^\[\w+\] epoch (?P<epoch>\d+): loss (?P<loss>{NUMBER}), {NUMBER} s(?P<validation> \(validation {NUMBER} s\))?, "
    rf"{NUMBER} images/s(?:, (?P<cache>.*))?$"
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(module, synthetic_root, tmp_path, epochs: int = 2, **engine_args) -> None:
    from anomalib.engine import Engine

    from anomalib_multiclass.data import MultiClassFolder

    engine = Engine(max_epochs=epochs, accelerator="cpu", default_root_dir=tmp_path, logger=False, **engine_args)
    engine.fit(module, datamodule=MultiClassFolder(root=synthetic_root, num_workers=0, train_batch_size=6))


def test_redirected_training_prints_one_line_per_epoch_with_loss_time_speed_and_cache(synthetic_root, tmp_path, capsys):
    torch.manual_seed(0)
    module = UniAD(**TINY_UNIAD)
    # the default rich progress bar, stdout captured (not a terminal); no validation, to keep it short
    _fit(module, synthetic_root, tmp_path, limit_val_batches=0)
    lines = [m for m in map(LINE.match, capsys.readouterr().out.splitlines()) if m]
    assert [(m["model"], m["epoch"], m["epochs"]) for m in lines] == [("UniAD", "1", "2"), ("UniAD", "2", "2")]
    assert all(float(m["loss"]) > 0 and float(m["seconds"]) > 0 and float(m["speed"]) > 0 for m in lines)
    # the 18 training images: stored in epoch 1, served from the cache in epoch 2
    assert lines[0]["cache"].startswith("feature cache filling, 18 images (")
    assert lines[1]["cache"].startswith("feature cache 18 images (")
    assert lines[1]["cache"].endswith(", 100 % hits")
    # the printed loss is the epoch's mean training loss, as logged
    assert float(lines[1]["loss"]) == pytest.approx(float(module.trainer.callback_metrics["train_loss_epoch"]), 1e-3)


def test_the_line_reports_a_switched_off_cache_and_leaves_it_out_for_models_without_one():
    class _Trainer:
        world_size, max_epochs, current_epoch, is_global_zero, sanity_checking = 1, -1, 4, True, False

    class NoCache(torch.nn.Module):
        pass

    printer = EpochProgressPrinter(stream=io.StringIO())
    printer.on_train_epoch_start(_Trainer(), NoCache())
    printer.on_train_batch_end(_Trainer(), NoCache(), {"loss": torch.tensor(0.5)}, None, 0)
    printer.on_validation_start(_Trainer(), NoCache())
    printer.on_validation_end(_Trainer(), NoCache())
    line = LINE_WITHOUT_TOTAL.match(printer.format_line(_Trainer(), NoCache()))
    assert line is not None
    assert (line["epoch"], line["loss"], line["cache"]) == ("5", "0.5", None)  # unbounded run: no "/total"
    assert line["validation"] is not None

    module = UniAD(**TINY_UNIAD, cache_features=False)
    printer.on_train_epoch_start(_Trainer(), module)
    assert printer.format_line(_Trainer(), module).endswith(", feature cache off")


def test_epoch_lines_only_where_no_progress_bar_is_seen():
    class _Trainer:
        def __init__(self, bar: object | None, callbacks: list | None = None) -> None:
            self.progress_bar_callback = bar
            self.callbacks = callbacks or []

    bar = object()
    assert not wants_epoch_lines(_Trainer(bar), _Terminal())  # a terminal with a bar: the bar is enough
    assert wants_epoch_lines(_Trainer(bar), io.StringIO())  # redirected: the bar draws nothing
    assert wants_epoch_lines(_Trainer(None), _Terminal())  # progress bar disabled
    # a printer the user passed to the trainer is kept (a model callback of the same type would replace it)
    assert epoch_progress_callbacks(_Trainer(None, [EpochProgressPrinter()])) == []
