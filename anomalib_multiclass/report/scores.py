"""``per_image_scores.csv``: one small row per test image, all the report reads to draw scores (never the maps).

Header (the contract with the evaluator): ``category,image_path,label,score,normalized_score,pred_label,threshold``.
``label`` and ``pred_label`` are 0/1, ``score`` the raw anomaly score, ``normalized_score`` the post-processor's,
``threshold`` the raw image threshold of the image's category as applied; any of them but ``score`` may be empty.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

PER_IMAGE_SCORES = "per_image_scores.csv"
HEADER = ("category", "image_path", "label", "score", "normalized_score", "pred_label", "threshold")


@dataclass(frozen=True)
class ImageScore:
    """One test image's row (``None``: not known)."""

    category: str
    image_path: str
    label: int | None
    score: float
    normalized_score: float | None = None
    pred_label: int | None = None
    threshold: float | None = None


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def write_per_image_scores(path: str | Path, rows: Iterable[ImageScore | Mapping[str, Any] | Sequence[Any]]) -> Path:
    """Write ``rows`` (``ImageScore``, dicts keyed by the header, or tuples in header order) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for row in rows:
            if isinstance(row, ImageScore):
                values = [getattr(row, name) for name in HEADER]
            elif isinstance(row, Mapping):
                values = [row.get(name) for name in HEADER]
            else:
                values = list(row)
            writer.writerow([_cell(v) for v in values])
    return path


def _number(text: str | None, kind: type = float) -> Any:
    text = (text or "").strip()
    if not text or text.lower() in {"nan", "null", "none"}:
        return None
    return kind(float(text)) if kind is int else kind(text)


def read_per_image_scores(path: str | Path) -> list[ImageScore]:
    """The rows of a ``per_image_scores.csv`` (rows without a score are skipped)."""
    rows = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            score = _number(row.get("score"))
            if score is None or math.isnan(score):
                continue
            rows.append(
                ImageScore(
                    category=row.get("category") or "all",
                    image_path=row.get("image_path") or "",
                    label=_number(row.get("label"), int),
                    score=score,
                    normalized_score=_number(row.get("normalized_score")),
                    pred_label=_number(row.get("pred_label"), int),
                    threshold=_number(row.get("threshold")),
                )
            )
    return rows


@dataclass
class CategoryScores:
    """What the report shows of one category: its scores by label, its threshold and the decisions at it.

    Everything is computed once, on construction (a category may have many thousand rows).
    """

    category: str
    rows: list[ImageScore] = field(default_factory=list)
    normal: list[ImageScore] = field(init=False)
    defective: list[ImageScore] = field(init=False)
    unlabelled: int = field(init=False)
    threshold: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.normal = [r for r in self.rows if r.label == 0]
        self.defective = [r for r in self.rows if r.label == 1]
        self.unlabelled = len(self.rows) - len(self.normal) - len(self.defective)
        # the category's raw threshold: the most common one if rows disagree
        values = Counter(r.threshold for r in self.rows if r.threshold is not None and not math.isnan(r.threshold))
        self.threshold = values.most_common(1)[0][0] if values else None

    def rejected(self, row: ImageScore) -> bool | None:
        """Whether the model called ``row`` anomalous: its ``pred_label``, else ``score >= threshold``."""
        if row.pred_label is not None:
            return bool(row.pred_label)
        threshold = self.threshold
        return None if threshold is None else row.score >= threshold

    def false_rejects(self) -> int | None:
        """Normal images called anomalous (``None``: no decision known)."""
        decisions = [self.rejected(r) for r in self.normal]
        return None if None in decisions else sum(decisions)

    def misses(self) -> int | None:
        """Defective images called normal (``None``: no decision known)."""
        decisions = [self.rejected(r) for r in self.defective]
        return None if None in decisions else sum(not d for d in decisions)

    def worst_normal(self, count: int) -> list[ImageScore]:
        """The highest-scoring normal images (the first to be rejected)."""
        return sorted(self.normal, key=lambda r: -r.score)[:count]

    def worst_defective(self, count: int) -> list[ImageScore]:
        """The lowest-scoring defective images (the first to be missed)."""
        return sorted(self.defective, key=lambda r: r.score)[:count]


def by_category(rows: Iterable[ImageScore]) -> dict[str, CategoryScores]:
    """Rows grouped by category, in order of first appearance."""
    groups: dict[str, list[ImageScore]] = {}
    for row in rows:
        groups.setdefault(row.category, []).append(row)
    return {category: CategoryScores(category, members) for category, members in groups.items()}


def roc_pr(normal: Sequence[float], defective: Sequence[float]) -> tuple[list[tuple[float, float]], ...]:
    """ROC points ``(fpr, tpr)`` and precision-recall points ``(recall, precision)``, one per distinct score.

    Empty lists when a class is missing (the curve is undefined, as the table's ``n/a``).
    """
    if not normal or not defective:
        return [], []
    scored = sorted([(s, 0) for s in normal] + [(s, 1) for s in defective], key=lambda item: -item[0])
    n_pos, n_neg = len(defective), len(normal)
    roc, pr = [(0.0, 0.0)], [(0.0, 1.0)]
    tp = fp = 0
    for index, (score, label) in enumerate(scored):
        tp, fp = tp + label, fp + (1 - label)
        if index + 1 < len(scored) and scored[index + 1][0] == score:
            continue  # ties: one point per distinct threshold
        roc.append((fp / n_neg, tp / n_pos))
        pr.append((tp / n_pos, tp / (tp + fp)))
    return roc, pr


def auroc(roc: Sequence[tuple[float, float]]) -> float:
    """Trapezoidal area under ROC points (NaN if none)."""
    if not roc:
        return math.nan
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(roc))


def average_precision(pr: Sequence[tuple[float, float]]) -> float:
    """Step-wise average precision, as scikit-learn and torchmetrics compute it (NaN if undefined)."""
    if not pr:
        return math.nan
    return sum((r1 - r0) * p1 for (r0, _), (r1, p1) in pairwise(pr))


def thin(points: Sequence[tuple[float, float]], limit: int = 256) -> list[tuple[float, float]]:
    """At most ``limit`` points of a curve, first and last kept: the SVG stays small for large test sets."""
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]
