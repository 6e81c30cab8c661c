"""The category map of a multi-class model: taken from the datamodule at fit time, checked at every other stage.

A model trained on 15 categories never silently remaps them: the ordered names (``category_names``) are read from
the datamodule when fitting, saved in the checkpoint (:mod:`.checkpoint`), and every validation, test and
prediction batch's ``class_index`` is checked against them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomalib_multiclass.category_map import check_batch_categories, check_category_names

if TYPE_CHECKING:
    from anomalib.data import Batch

if TYPE_CHECKING:  # the mixins are read as what they extend: an AnomalibModule (super() calls checked)
    from anomalib.models.components import AnomalibModule as ModuleBase
else:
    ModuleBase = object


class CategoryMapMixin(ModuleBase):
    """Keeps the ordered category names a model was trained on and refuses data that means others."""

    category_names: list[str] | None = None

    @property
    def num_classes(self) -> int | None:
        """Number of categories the model was trained on, if known."""
        return None if self.category_names is None else len(self.category_names)

    def setup(self, stage: str) -> None:
        """Take the category map from the datamodule at fit time; check it at any other stage."""
        names = datamodule_category_names(self)
        if names is not None:
            if self.category_names is None:
                self.category_names = names
            else:
                check_category_names(self.category_names, names)
        self._sync_post_processor()
        super().setup(stage)

    def _check_batch_categories(self, batch: Batch) -> None:
        """Refuse data whose ``class_index`` means another category than it did in training."""
        check_batch_categories(self.category_names, batch)

    def on_validation_batch_start(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Check the batch's category map (data that bypassed the datamodule check, e.g. bare dataloaders)."""
        del batch_idx, dataloader_idx
        self._check_batch_categories(batch)

    def on_test_batch_start(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Check the batch's category map."""
        del batch_idx, dataloader_idx
        self._check_batch_categories(batch)

    def on_predict_batch_start(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Check the batch's category map."""
        del batch_idx, dataloader_idx
        self._check_batch_categories(batch)

    def _sync_post_processor(self) -> None:
        resize = getattr(getattr(self, "post_processor", None), "set_num_classes", None)
        if resize is not None and self.category_names is not None:
            resize(len(self.category_names))


def datamodule_category_names(module: Any) -> list[str] | None:
    """The category names of the datamodule attached to ``module``'s trainer (``None`` without one)."""
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    names = getattr(datamodule, "category_names", None)
    return list(names) if names is not None else None
