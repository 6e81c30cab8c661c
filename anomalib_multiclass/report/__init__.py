"""The per-run HTML report: ``report.html`` in the run folder after every test, or on demand.

``anomalib-multiclass report <run_dir>`` rebuilds it from a run folder; :func:`report_after_test` is the in-run
hook (the evaluator calls it once the table is written). Imports no torch: the report reads small files only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from anomalib_multiclass.report.html import CATEGORY_RUNS, REPORT, build_report
from anomalib_multiclass.report.run_info import RUN_INFO, record_run_info
from anomalib_multiclass.report.scores import (
    HEADER,
    PER_IMAGE_SCORES,
    ImageScore,
    read_per_image_scores,
    write_per_image_scores,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORY_RUNS",
    "HEADER",
    "PER_IMAGE_SCORES",
    "REPORT",
    "RUN_INFO",
    "ImageScore",
    "build_report",
    "read_per_image_scores",
    "report_after_test",
    "write_per_image_scores",
]


def report_after_test(directory: str | Path | None, command: str | None = None) -> Path | None:
    """Record the run's command and commit, then write ``report.html``; a failure is a warning, never an error.

    A report is a convenience: a broken one must not fail a test run whose table is already written.
    """
    if directory is None:
        return None
    try:
        record_run_info(Path(directory), command)
        path = build_report(directory)
    except Exception as error:  # see the docstring
        logger.warning("Could not write the HTML report in %s: %r", directory, error)
        return None
    logger.info("Report written to %s", path)
    return path
