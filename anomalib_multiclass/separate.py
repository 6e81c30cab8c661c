"""One model per category: the "separate" baseline that the papers report beside "unified".

    anomalib-multiclass separate --model Padim --data MultiClassFolder --data.root ./datasets/synthetic
    anomalib-multiclass separate --config configs/uniad.yaml

takes exactly the arguments of ``anomalib train``, trains and tests one model per category of the multi-category
datamodule (each run is ``anomalib train ... --data.categories [<category>]``, with the same seed), and writes the
same per-category table as a unified run: one row per category from that category's own model, the mean over
categories, and ``pooled`` over every model's normalised scores (what a line of per-category models thresholds),
and its ``report.html`` (each category's scores and pictures from that category's run folder).

    anomalib-multiclass report <run_dir>

(re)builds ``<run_dir>/report.html`` from a finished run folder (unified or separate): the per-category table,
score histograms with each category's threshold, ROC and PR curves, and the worst false rejects and misses.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from anomalib_multiclass.evaluation.protocol import CategoryTable, pooled_row
from anomalib_multiclass.evaluation.table import format_report, write_results
from anomalib_multiclass.utils.console import show

logger = logging.getLogger(__name__)


def _categories_of(args: Sequence[str]) -> tuple[list[str], str, str, Path]:
    """The datamodule's categories, the model and datamodule names, and the root folder, from the CLI arguments."""
    from anomalib.cli import AnomalibCLI

    probe = AnomalibCLI(["fit", *args], run=False)
    datamodule = probe.datamodule
    categories = getattr(datamodule, "categories", None)
    if not categories:
        msg = (
            f"Separate mode needs a multi-category datamodule (e.g. MultiClassFolder, MultiClassMVTecAD); got "
            f"{type(datamodule).__name__}."
        )
        raise ValueError(msg)
    root = Path(probe.config["fit"].get("default_root_dir") or "results")
    return list(categories), type(probe.model).__name__, type(datamodule).__name__, root


def train_separately(args: Sequence[str]) -> CategoryTable:
    """Train and test one model per category with ``anomalib train <args>``; the merged per-category table."""
    from anomalib.cli import AnomalibCLI

    from anomalib_multiclass.evaluation.per_category import PerCategoryEvaluator

    categories, model_name, data_name, root = _categories_of(args)
    table = CategoryTable()
    statistics = None
    run_dirs: dict[str, Path] = {}
    metric_names: list[str] = []
    for number, category in enumerate(categories, start=1):
        show(f"Separate mode: {model_name} for category {category!r} ({number} of {len(categories)})")
        cli = AnomalibCLI(["train", *args, "--data.categories", json.dumps([category])])
        evaluator = getattr(cli.model, "evaluator", None)
        if not isinstance(evaluator, PerCategoryEvaluator):
            msg = (
                f"Separate mode reads the per-category table of each run, but {model_name} was given a "
                f"{type(evaluator).__name__}. Leave --model.evaluator at its default or pass a PerCategoryEvaluator."
            )
            raise TypeError(msg)
        metric_names = evaluator.metric_names
        table.results[category] = evaluator.results[category]
        if category in evaluator.notes:
            table.notes[category] = evaluator.notes[category]
        # each model's streamed statistics (fixed size per category): the pooled row mixes their normalised values
        statistics = evaluator.statistics if statistics is None else statistics.merge([evaluator.statistics])
        run_dirs[category] = Path(cli.engine.trainer.default_root_dir)
    table.add_mean("mean", categories, metric_names)
    if statistics is not None:
        table.add_row("pooled", pooled_row(statistics, metric_names))
    directory = root / model_name / data_name / "separate"
    write_results(directory, table.results, metric_names, table.notes, table.counted, table.bounds)
    report = _separate_report(directory, run_dirs)
    title = f"Separate mode: one {model_name} per category ({len(categories)} models)."
    show(f"\n{title}\n{format_report(table.results, metric_names, table.notes)}\nWritten to {directory}\n")
    if report is not None:
        show(f"Report: {report}")
    return table


def _separate_report(directory: Path, run_dirs: dict[str, Path]) -> Path | None:
    """The merged folder's report: each category's per-image scores and pictures from its own run folder."""
    from anomalib_multiclass.report import (
        CATEGORY_RUNS,
        PER_IMAGE_SCORES,
        read_per_image_scores,
        report_after_test,
        write_per_image_scores,
    )

    rows = []
    for category, run_dir in run_dirs.items():
        if (run_dir / PER_IMAGE_SCORES).is_file():
            rows += [r for r in read_per_image_scores(run_dir / PER_IMAGE_SCORES) if r.category == category]
    if rows:
        write_per_image_scores(directory / PER_IMAGE_SCORES, rows)
    relative = {c: os.path.relpath(d.resolve(), directory.resolve()) for c, d in run_dirs.items()}
    (directory / CATEGORY_RUNS).write_text(json.dumps(relative, indent=2))
    return report_after_test(directory)


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-multiclass separate <anomalib train arguments>`` or ``anomalib-multiclass report <run_dir>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in {"separate", "report"} or argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        return 0 if argv[1:2] in (["-h"], ["--help"]) else 2
    if argv[0] == "report":
        return _report_command(argv[1:])
    train_separately(argv[1:])
    return 0


def _report_command(folders: Sequence[str]) -> int:
    """Rebuild ``report.html`` in each run folder given; 2 if one is not a run folder."""
    from anomalib_multiclass.report import build_report

    if not folders:
        print("usage: anomalib-multiclass report <run_dir> [<run_dir> ...]", file=sys.stderr)
        return 2
    status = 0
    for folder in map(Path, folders):
        if not (folder / "per_category_metrics.json").is_file():
            print(f"{folder}: not a run folder (no per_category_metrics.json)", file=sys.stderr)
            status = 2
            continue
        print(build_report(folder))
    return status
