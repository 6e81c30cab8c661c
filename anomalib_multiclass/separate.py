"""One model per category: the "separate" baseline that the papers report beside "unified".

    anomalib-multiclass separate --model Padim --data MultiClassFolder --data.root ./datasets/synthetic
    anomalib-multiclass separate --config configs/uniad.yaml

takes exactly the arguments of ``anomalib train``, trains and tests one model per category of the multi-category
datamodule (each run is ``anomalib train ... --data.categories [<category>]``, with the same seed), and writes the
same per-category table as a unified run: one row per category from that category's own model, the mean over
categories, and ``pooled`` over every model's normalised scores (what a line of per-category models thresholds).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from anomalib_multiclass.evaluation.protocol import CategoryTable, pooled_row
from anomalib_multiclass.evaluation.table import (
    category_thresholds,
    format_report,
    normalised_threshold,
    write_per_image_scores,
    write_results,
)
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
    thresholds: dict[str, float] = {}
    normalised: float | None = None
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
        thresholds |= category_thresholds(evaluator.statistics, evaluator.post_processor)
        normalised = normalised_threshold(evaluator.post_processor)  # the same sensitivity for every model
    table.add_mean("mean", categories, metric_names)
    if statistics is not None:
        table.add_row("pooled", pooled_row(statistics, metric_names))
    directory = root / model_name / data_name / "separate"
    write_results(directory, table.results, metric_names, table.notes, table.counted, table.bounds)
    if statistics is not None:
        write_per_image_scores(directory / "per_image_scores.csv", statistics, thresholds, normalised)
    title = f"Separate mode: one {model_name} per category ({len(categories)} models)."
    show(f"\n{title}\n{format_report(table.results, metric_names, table.notes)}\nWritten to {directory}\n")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-multiclass separate <anomalib train arguments>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in {"separate"} or argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        return 0 if argv[1:2] in (["-h"], ["--help"]) else 2
    train_separately(argv[1:])
    return 0
