"""What every multi-class model of this package shares on top of ``AnomalibModule``, one mixin per concern.

anomalib finds models by walking ``AnomalibModule.__subclasses__()`` (direct subclasses only), so our models
subclass ``AnomalibModule`` directly and take the multi-class behaviour from :class:`MultiClassMixin`, put first
in the bases: ``class UniAD(MultiClassMixin, FeatureCacheMixin, AnomalibModule)``. It is made of

- :class:`~.categories.CategoryMapMixin`: the ordered category names, taken from the datamodule at fit time and
  checked on every later batch;
- :class:`~.multiclass_export.MultiClassExportMixin`: exports that carry the category map and thresholds, never
  overwrite, and quantize on images of every category;
- :class:`~.checkpoint.CheckpointMixin`: the category map and model class saved with the weights, the network
  rebuilt from a checkpoint's own arguments;

and adds, itself, the anomalib components a multi-class model needs (per-category pre/post-processing,
evaluation and pictures) and test and prediction as the model's own ``validation_step``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import torch
from anomalib import LearningType
from torch import nn

from anomalib_multiclass.category_map import (
    CATEGORY_NAMES_KEY,
    CategoryMismatchError,
    check_batch_categories,
    check_category_names,
)
from anomalib_multiclass.data.dataclasses import MultiClassInferenceBatch
from anomalib_multiclass.models.components.categories import CategoryMapMixin
from anomalib_multiclass.models.components.checkpoint import CheckpointMixin
from anomalib_multiclass.models.components.checks import CheckpointModelError, check_optimizer_arguments
from anomalib_multiclass.models.components.multiclass_export import MultiClassExportMixin

if TYPE_CHECKING:
    from anomalib.data import Batch
    from anomalib.metrics import Evaluator
    from anomalib.pre_processing import PreProcessor
    from anomalib.visualization import Visualizer
    from lightning.pytorch import Callback


class MultiClassMixin(CategoryMapMixin, MultiClassExportMixin, CheckpointMixin):
    """Multi-class behaviour for an ``AnomalibModule``: its components, its test and prediction steps."""

    model: Any  # the torch model, built by each model's constructor
    validation_step: Callable[..., Any]  # each model's own: the image alone in, the torch model's outputs out
    model_input_size: tuple[int, int]  # set by each model before anomalib's __init__ builds the pre-processor
    backbone_name: str

    def __init__(
        self,
        backbone: str,
        input_size: Sequence[int],
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        """Record the backbone and input size the default pre-processor is built from, then build the components.

        ``True`` for a component means this package's (the ``configure_*`` methods below), as in anomalib.
        """
        self.model_input_size = tuple(int(size) for size in input_size)
        self.backbone_name = backbone
        super().__init__(
            pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator, visualizer=visualizer
        )

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    def test_step(self, batch: Batch, batch_idx: int = 0, *args: Any, **kwargs: Any) -> Batch:
        """As prediction: the evaluator and visualizer then see every output of the model."""
        del args, kwargs
        return self.predict_step(batch, batch_idx)

    def predict_step(self, batch: Batch, batch_idx: int = 0, dataloader_idx: int = 0) -> Batch:
        """As the model's own validation step (the post-processor callback thresholds and normalises).

        A plain anomalib ``ImageBatch`` (anomalib's ``PredictDataset`` on a folder of images, its ``Folder``
        datamodule) has no ``pred_class`` field and its ``update`` would drop the predicted class, so the
        post-processor fell back to the global threshold: it is turned into a :class:`MultiClassImageBatch`.
        """
        del batch_idx, dataloader_idx
        return self.validation_step(as_multiclass_batch(batch))

    @torch.no_grad()
    def count_parameters(self) -> dict[str, int]:
        """Learnable and frozen parameter counts of the torch model."""
        parameters = list(self.model.parameters())
        learnable = sum(p.numel() for p in parameters if p.requires_grad)
        return {"learnable": learnable, "frozen": sum(p.numel() for p in parameters) - learnable}

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's component callbacks, plus one plain line per epoch where no progress bar is seen."""
        from anomalib_multiclass.models.components.progress import epoch_progress_callbacks

        callbacks = list(super().configure_callbacks())
        callbacks += epoch_progress_callbacks(getattr(self, "_trainer", None))
        return callbacks

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation (thresholds are learnt on the real pass); the model's gradient clipping, if any."""
        clip = getattr(self, "gradient_clip_val", None)
        return {"num_sanity_val_steps": 0, **({"gradient_clip_val": clip} if clip else {})}

    def configure_pre_processor(self, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to the model's input size, normalise as its backbone's pretrained weights expect.

        The mean and std come from timm's pretrained config of ``backbone`` (ImageNet statistics for the papers'
        weights, 0.5 / 0.5 for TensorFlow-ported ones such as EfficientNet-Lite0); pass a ``pre_processor`` (e.g.
        ``backbone_pre_processor(backbone, size, mean=..., std=...)``) to override them.
        """
        from anomalib_multiclass.models.components.training import backbone_pre_processor

        size = image_size or self.model_input_size
        return backbone_pre_processor(getattr(self, "backbone_name", ""), size)

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Per-category test metrics (each metric per category, their mean, and pooled)."""
        from anomalib_multiclass.evaluation import PerCategoryEvaluator

        return PerCategoryEvaluator()

    def configure_post_processor(self) -> nn.Module:
        """Per-category thresholds and normalisation (global ones where the class is unknown)."""
        from anomalib_multiclass.post_processing import ClassAwarePostProcessor

        return ClassAwarePostProcessor(num_classes=len(self.category_names or []))

    @staticmethod
    def configure_visualizer() -> Visualizer:
        """Heat-map pictures, one folder per category."""
        from anomalib_multiclass.visualization import MultiClassImageVisualizer

        return MultiClassImageVisualizer()

    def setup(self, stage: str) -> None:
        """Refuse a pre-processor of another size than the network's, and optimizer arguments that cannot train."""
        self._check_pre_processor_size()
        if stage == "fit":
            check_optimizer_arguments(self)
        super().setup(stage)

    def _check_pre_processor_size(self) -> None:
        """A pre-processor that resizes to another size than the network was built for is refused, clearly."""
        from torchvision.transforms.v2 import Compose, Resize

        def leaves(transform: Any) -> list[Any]:
            if isinstance(transform, Compose):
                return [leaf for child in transform.transforms for leaf in leaves(child)]
            return [transform]

        transform = getattr(getattr(self, "pre_processor", None), "transform", None)
        sizes = [tuple(t.size) for t in leaves(transform) if isinstance(t, Resize) and t.size is not None]
        if sizes and len(sizes[-1]) == 2 and sizes[-1] != tuple(self.model_input_size):
            msg = (
                f"{type(self).__name__} was built for {tuple(self.model_input_size)} images (its token grid, masks and "
                f"positional embeddings), but its pre-processor resizes to {sizes[-1]}. Build the model with "
                f'input_size={list(sizes[-1])} (command line: --model.input_size "{list(sizes[-1])}"), or resize to '
                f"{list(self.model_input_size)} in the pre-processor."
            )
            raise ValueError(msg)


def as_multiclass_batch(batch: Batch) -> Batch:
    """``batch`` as a :class:`MultiClassImageBatch` (which keeps ``pred_class``) if it is a plain ``ImageBatch``."""
    from anomalib.data import ImageBatch

    from anomalib_multiclass.data.dataclasses import MultiClassImageBatch

    if isinstance(batch, MultiClassImageBatch) or type(batch) is not ImageBatch:
        return batch
    return MultiClassImageBatch(**{f.name: getattr(batch, f.name) for f in fields(batch) if f.init})


__all__ = [
    "CATEGORY_NAMES_KEY",
    "CategoryMismatchError",
    "CheckpointModelError",
    "MultiClassInferenceBatch",
    "MultiClassMixin",
    "as_multiclass_batch",
    "check_batch_categories",
    "check_category_names",
]
