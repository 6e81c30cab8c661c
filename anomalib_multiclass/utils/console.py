"""What a run shows its user on the console: the per-category table, class accuracy, progress lines.

Written through one logger, ``anomalib_multiclass.results`` (INFO, to standard output as plain text, not
propagated to the root logger that anomalib's CLI decorates), so that the results appear where Lightning's own
results table does, reach a file when stdout is redirected, and can be silenced or re-routed like any log:
``logging.getLogger("anomalib_multiclass.results").setLevel(logging.WARNING)``. Only global rank 0 writes.
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.utilities import rank_zero_only

RESULTS_LOGGER = "anomalib_multiclass.results"


class _StandardOutput(logging.StreamHandler):
    """A stream handler bound to whatever ``sys.stdout`` is when a record is written (test captures included)."""

    def emit(self, record: logging.LogRecord) -> None:
        # not ``setStream``: it flushes the previous stream first, which a finished capture has closed
        self.stream = sys.stdout
        super().emit(record)


def results_logger() -> logging.Logger:
    """The results logger, with its standard-output handler attached once."""
    logger = logging.getLogger(RESULTS_LOGGER)
    if not any(isinstance(handler, _StandardOutput) for handler in logger.handlers):
        handler = _StandardOutput(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


@rank_zero_only
def show(text: str) -> None:
    """Show ``text`` to the user (global rank 0 only)."""
    results_logger().info(text)
