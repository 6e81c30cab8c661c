"""Learning curves: the mean per-category image and pixel AUROC every few epochs, and their picture.

``CurveRecorder`` is a Lightning callback that a benchmark run adds to the plain ``anomalib train`` command
(``--trainer.callbacks``); with ``--trainer.check_val_every_n_epoch k`` the validation pass (the proxy's test
split: anomalib's ``val_split_mode`` same-as-test) logs the evaluator's per-category means, which it appends to a
JSON file. ``plot_curves`` draws one line per model, with horizontal lines for the baselines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

CURVE_METRICS = ("image_AUROC", "pixel_AUROC")


class CurveRecorder(Callback):
    """Append ``{"epoch", "image_AUROC", "pixel_AUROC"}`` to ``path`` after every validation pass.

    Args:
        path: JSON file of the curve (a list of points), rewritten after each pass.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.points: list[dict[str, float]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the pass's validation means (logged by the per-category evaluator at its epoch end, which runs
        after this callback's own ``on_validation_epoch_end`` would: the values are read once the pass is over)."""
        del pl_module
        if trainer.sanity_checking:
            return
        point: dict[str, float] = {"epoch": trainer.current_epoch + 1}
        for name in CURVE_METRICS:
            value = trainer.callback_metrics.get(name)
            if value is not None:
                point[name] = float(value)
        self.points.append(point)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.points, indent=1))


def read_curve(path: Path) -> list[dict[str, float]]:
    """The points a ``CurveRecorder`` wrote (empty if it wrote none)."""
    return json.loads(path.read_text()) if path.exists() else []


def plot_curves(
    curves: dict[str, list[dict[str, float]]], references: dict[str, dict[str, float]], output: Path
) -> Path:
    """One panel per metric: a line per model over epochs, a dashed horizontal line per reference model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(6 * len(CURVE_METRICS), 4.2), squeeze=False)
    for axis, metric in zip(axes[0], CURVE_METRICS, strict=True):
        for name, points in curves.items():
            xs = [p["epoch"] for p in points if metric in p]
            ys = [p[metric] for p in points if metric in p]
            if xs:
                axis.plot(xs, ys, marker="o", markersize=3, label=name)
        for index, (name, values) in enumerate(references.items()):
            if metric in values:
                axis.axhline(values[metric], linestyle="--", linewidth=1, color=f"C{len(curves) + index}", label=name)
        axis.set_xlabel("epoch")
        axis.set_ylabel(f"mean per-category {metric.replace('_', ' ')}")
        axis.set_ylim(0.4, 1.0)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def curve_summary(points: list[dict[str, Any]]) -> str:
    """``epoch: image/pixel`` pairs, for the markdown table."""
    return ", ".join(
        f"{int(p['epoch'])}: {p.get('image_AUROC', float('nan')):.2f}/{p.get('pixel_AUROC', float('nan')):.2f}"
        for p in points
    )
