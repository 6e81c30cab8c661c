"""The per-category table as text, CSV and JSON; undefined values are ``n/a`` / ``null``, never numbers."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anomalib_multiclass.report.scores import ImageScore
from anomalib_multiclass.statistics import StreamingStatistics

logger = logging.getLogger(__name__)

ALL_CATEGORY = "all"
SUMMARY_ROWS = ("mean", "pooled")
CAPTION = (
    "category rows and means: each metric on the category's raw anomaly scores and maps (the papers' protocol); "
    "pooled: all images mixed, on the post-processor's normalised scores (what one threshold for all categories "
    "sees)."
)


def is_summary_row(name: str) -> bool:
    """``mean``, ``pooled`` and the per-dataset ``mean[<dataset>]`` rows, as opposed to categories."""
    return name in SUMMARY_ROWS or (name.startswith("mean[") and name.endswith("]"))


def dataset_of(category: str) -> str | None:
    """The dataset prefix of a namespaced category (``visa/candle`` -> ``visa``), else ``None``."""
    prefix, separator, _ = category.partition("/")
    return prefix if separator else None


def _cell(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def format_table(results: dict[str, dict[str, float]], metric_names: Sequence[str]) -> str:
    """Plain-text table: one row per category, then the per-dataset means (if any), mean and pooled."""
    header = ["category", *metric_names]
    rows = [[name] + [_cell(values.get(m, math.nan)) for m in metric_names] for name, values in results.items()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    separator = "  ".join("-" * w for w in widths)
    body = [line(r) for r in rows]
    n_categories = sum(not is_summary_row(name) for name in results)  # compute() puts the summary rows last
    return "\n".join([line(header), separator, *body[:n_categories], separator, *body[n_categories:]])


def format_report(
    results: dict[str, dict[str, float]], metric_names: Sequence[str], notes: dict[str, str] | None = None
) -> str:
    """The table with its title, caption and the notes on undefined metrics."""
    n_categories = sum(not is_summary_row(row) for row in results)
    lines = [f"Per-category test metrics ({n_categories} categories):", format_table(results, metric_names)]
    lines += [f"{row}: {note}" for row, note in (notes or {}).items()]
    lines.append(CAPTION)
    return "\n".join(lines)


def write_results(
    directory: Path,
    results: dict[str, dict[str, float]],
    metric_names: Sequence[str],
    notes: dict[str, str] | None = None,
    counted: dict[str, dict[str, int]] | None = None,
    bounds: dict[str, dict[str, float]] | None = None,
) -> tuple[Path, Path]:
    """``per_category_metrics.csv`` and ``.json`` in ``directory``.

    Undefined metrics are ``null`` in both. A ``note`` column/field says why a category's metrics are undefined
    and over how many categories a mean runs; JSON summary rows also carry ``n_categories`` per metric, and rows
    with binned (pixel) metrics their ``error_bound`` per metric.
    """
    notes, counted, bounds = notes or {}, counted or {}, bounds or {}
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = directory / "per_category_metrics.csv", directory / "per_category_metrics.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", *metric_names, "note"])
        for row, values in results.items():
            cells = ["null" if math.isnan(values[m]) else values[m] for m in metric_names]
            writer.writerow([row, *cells, notes.get(row, "")])
    payload: dict[str, dict] = {}
    for row, values in results.items():
        entry: dict = {m: None if math.isnan(values[m]) else values[m] for m in metric_names}
        if row in counted:
            entry["n_categories"] = counted[row]
        if bounds.get(row):
            entry["error_bound"] = bounds[row]
        if row in notes:
            entry["note"] = notes[row]
        payload[row] = entry
    json_path.write_text(json.dumps(payload, indent=2))
    logger.info("Per-category metrics written to %s and %s", csv_path, json_path)
    return csv_path, json_path


def category_thresholds(statistics: StreamingStatistics, post_processor: Any) -> dict[str, float]:
    """The raw image threshold each category's images are decided with.

    The category's own where the post-processor has per-class thresholds, its global one otherwise, NaN without.
    """
    thresholds = {}
    per_class = getattr(post_processor, "_class_image_threshold", None)
    global_threshold = getattr(post_processor, "image_threshold", None)
    for category, stats in statistics:
        value = global_threshold
        if per_class is not None and stats.class_index is not None:
            value = per_class(torch.tensor([stats.class_index]))
        thresholds[category] = float(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) else math.nan
    return thresholds


def per_image_rows(statistics: StreamingStatistics, post_processor: Any = None) -> list[ImageScore]:
    """One row per test image for ``per_image_scores.csv`` (the HTML report reads it).

    ``score`` is raw, ``normalized_score`` the post-processor's, ``pred_label`` its decision (normalised score above
    its normalised threshold, else raw score above ``threshold``), ``threshold`` the category's raw threshold.
    """
    thresholds = category_thresholds(statistics, post_processor)
    normalised_threshold = getattr(post_processor, "normalized_image_threshold", None)
    normalised_threshold = float(normalised_threshold) if isinstance(normalised_threshold, torch.Tensor) else None
    rows = []
    for category, stats in statistics:
        values = stats.image_values()
        labels = stats.labels
        threshold = thresholds[category]
        paths = stats.paths or [""] * len(labels)
        for image, label, score, normalised in zip(
            paths, labels, values["pred_score"].tolist(), values["normalised_score"].tolist(), strict=True
        ):
            if not math.isnan(normalised) and normalised_threshold is not None:
                decision: int | None = int(normalised > normalised_threshold)
            else:
                decision = None if math.isnan(threshold) else int(score > threshold)
            known = None if math.isnan(normalised) else normalised
            applied = None if math.isnan(threshold) else threshold
            rows.append(ImageScore(category, image, None if label < 0 else label, score, known, decision, applied))
    return rows
