"""Heat-map pictures saved per category.

anomalib's ``ImageVisualizer`` names each picture from the image path relative to one dataset root and
category; with several categories, ``bottle/test/good/000.png`` and ``cable/test/good/000.png`` would both
land on ``images/good/000.png``. This visualizer writes ``images/<category>/<path below the category
folder>`` instead (``images/bottle/test/good/000.png``); everything else is anomalib's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.item_visualizer import visualize_image_item


def category_output_path(image_path: str, category: str | None, output_dir: Path) -> Path:
    """``output_dir/<category>/<path below the category's folder>`` (parent folder name if not found)."""
    path = Path(image_path)
    leaf = (category or "").split("/")[-1]
    parts = path.parts
    below = (path.parent.name,)
    if leaf and leaf in parts[:-1]:
        index = len(parts) - 2 - parts[:-1][::-1].index(leaf)
        below = parts[index + 1 : -1]
    folder = output_dir.joinpath(*(category.split("/") if category else []), *below)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / path.name


class MultiClassImageVisualizer(ImageVisualizer):
    """anomalib's image visualizer, saving pictures in one folder per category."""

    def _save(self, trainer: Any, batch: Any) -> None:
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "images"
        categories = getattr(batch, "category", None)
        for index, item in enumerate(batch):
            image = visualize_image_item(
                item,
                fields=self.fields,
                overlay_fields=self.overlay_fields,
                field_size=self.field_size,
                fields_config=self.fields_config,
                overlay_fields_config=self.overlay_fields_config,
                text_config=self.text_config,
            )
            if image is not None:
                category = categories[index] if categories else None
                image.save(category_output_path(item.image_path or f"{index}.png", category, Path(self.output_dir)))

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Save one picture per test image."""
        del pl_module, outputs, args, kwargs
        self._save(trainer, batch)

    def on_predict_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Save one picture per predicted image."""
        del pl_module, args, kwargs
        self._save(trainer, outputs if outputs is not None else batch)
