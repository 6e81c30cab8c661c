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

from anomalib_multiclass.utils.paths import category_picture_path


def category_output_path(image_path: str, category: str | None, output_dir: Path) -> Path:
    """``output_dir/<category>/<path below the category's folder>`` (parent folder name if not found), folder made."""
    path = category_picture_path(image_path, category, output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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


_PATCHED = "_anomalib_multiclass_category_pictures"


def use_category_folders(model: Any) -> bool:
    """Give anomalib's own ``ImageVisualizer`` of ``model`` our picture names if its data has categories.

    anomalib names a picture by its parent folder, so on a multi-category datamodule ``brick/test/good/000.png`` and
    ``grass/test/good/000.png`` overwrite each other in ``images/good/``, and the report would show another
    category's picture. Only an exact ``ImageVisualizer`` is changed (its settings kept); True if changed.
    """
    trainer = getattr(model, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    visualizer = getattr(model, "visualizer", None)
    if getattr(datamodule, "category_names", None) is None or type(visualizer) is not ImageVisualizer:
        return False
    visualizer.__class__ = MultiClassImageVisualizer  # a subclass with no state of its own: only the file names differ
    return True


def install_category_pictures(module_class: type) -> None:
    """Patch anomalib's ``AnomalibModule.configure_callbacks`` to apply :func:`use_category_folders` (once)."""
    if getattr(module_class, _PATCHED, False):
        return
    configure_callbacks = module_class.configure_callbacks

    def configure_callbacks_with_category_pictures(self: Any) -> Any:
        use_category_folders(self)
        return configure_callbacks(self)

    configure_callbacks_with_category_pictures.__doc__ = configure_callbacks.__doc__
    module_class.configure_callbacks = configure_callbacks_with_category_pictures
    setattr(module_class, _PATCHED, True)
