"""Small inline SVG plots written by hand: no plotting library, no script, nothing fetched when the page opens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 360, 220
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 34, 36
NORMAL_COLOUR, DEFECTIVE_COLOUR, THRESHOLD_COLOUR = "#2b7bba", "#d9480f", "#222"


def _frame(title: str, x_label: str, y_label: str, body: str, ticks: str) -> str:
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
        f'<text x="{WIDTH / 2}" y="14" text-anchor="middle" class="title">{escape(title)}</text>'
        f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#999"/>'
        f"{ticks}{body}"
        f'<text x="{LEFT + inner_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="12" y="{TOP + inner_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + inner_h / 2})">{escape(y_label)}</text></svg>'
    )


def _x(value: float, low: float, high: float) -> float:
    return LEFT + (value - low) / ((high - low) or 1.0) * (WIDTH - LEFT - RIGHT)


def _y(value: float, low: float, high: float) -> float:
    return HEIGHT - BOTTOM - (value - low) / ((high - low) or 1.0) * (HEIGHT - TOP - BOTTOM)


def _ticks(x_range: tuple[float, float], y_range: tuple[float, float]) -> str:
    parts = []
    for fraction in (0.0, 0.5, 1.0):
        xv = x_range[0] + fraction * (x_range[1] - x_range[0])
        yv = y_range[0] + fraction * (y_range[1] - y_range[0])
        x, y = _x(xv, *x_range), _y(yv, *y_range)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 13}" text-anchor="middle">{_short(xv)}</text>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{_short(yv)}</text>')
    return "".join(parts)


def _short(value: float) -> str:
    return f"{value:.3g}"


def histogram_svg(normal: Sequence[float], defective: Sequence[float], threshold: float | None, bins: int = 30) -> str:
    """Share of normal and of defective images per score bin, outlined, with the threshold as a dashed line."""
    values = [*normal, *defective, *([threshold] if threshold is not None else [])]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    width = (high - low) / bins
    shares = []
    for group in (normal, defective):
        counts = [0] * bins
        for value in group:
            counts[min(int((value - low) / width), bins - 1)] += 1
        shares.append([c / len(group) for c in counts] if group else counts)
    top = max(max(s) for s in shares) or 1.0
    body = []
    for share, colour, name in ((shares[0], NORMAL_COLOUR, "normal"), (shares[1], DEFECTIVE_COLOUR, "defective")):
        for index, value in enumerate(share):
            if value > 0:
                x0, x1 = _x(low + index * width, low, high), _x(low + (index + 1) * width, low, high)
                y0 = _y(value, 0, top)
                body.append(
                    f'<rect class="{name}" x="{x0:.1f}" y="{y0:.1f}" width="{max(x1 - x0, 0.5):.1f}" '
                    f'height="{HEIGHT - BOTTOM - y0:.1f}" fill="{colour}" fill-opacity="0.45" stroke="{colour}"/>'
                )
    legend = (  # one line between the title and the plot: never over the bars
        f'<text x="{LEFT}" y="28" fill="{NORMAL_COLOUR}">normal ({len(normal)})</text>'
        f'<text x="{LEFT + 80}" y="28" fill="{DEFECTIVE_COLOUR}">defective ({len(defective)})</text>'
    )
    if threshold is not None:
        x = _x(threshold, low, high)
        body.append(
            f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="2" stroke-dasharray="5 3"/>'
        )
        legend += (
            f'<line x1="{WIDTH - RIGHT - 110}" x2="{WIDTH - RIGHT - 92}" y1="25" y2="25" stroke="{THRESHOLD_COLOUR}" '
            f'stroke-width="2" stroke-dasharray="5 3"/><text x="{WIDTH - RIGHT}" y="28" text-anchor="end">'
            f"threshold {_short(threshold)}</text>"
        )
    return _frame(
        "Image scores", "raw anomaly score", "share of images", "".join(body) + legend, _ticks((low, high), (0, top))
    )


def curve_svg(points: Sequence[tuple[float, float]], title: str, x_label: str, y_label: str, diagonal: bool) -> str:
    """A curve in the unit square (ROC with its chance diagonal, or precision-recall)."""
    if not points:
        return ""
    path = " ".join(f"{_x(x, 0, 1):.1f},{_y(y, 0, 1):.1f}" for x, y in points if not math.isnan(y))
    body = f'<polyline class="curve" points="{path}" fill="none" stroke="{DEFECTIVE_COLOUR}" stroke-width="2"/>'
    if diagonal:
        body = (
            f'<line x1="{_x(0, 0, 1)}" y1="{_y(0, 0, 1)}" x2="{_x(1, 0, 1)}" y2="{_y(1, 0, 1)}" '
            'stroke="#bbb" stroke-dasharray="3 3"/>' + body
        )
    return _frame(title, x_label, y_label, body, _ticks((0, 1), (0, 1)))
