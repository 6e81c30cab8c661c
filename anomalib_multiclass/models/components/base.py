"""What every multi-class model of this package shares on top of ``AnomalibModule``.

anomalib finds models by walking ``AnomalibModule.__subclasses__()`` (direct subclasses only), so
our models subclass ``AnomalibModule`` directly and take the multi-class behaviour from this
mixin: ``class UniAD(MultiClassMixin, AnomalibModule)``.

The mixin
- keeps the ordered category names the model was trained on (``category_names``), read from the
  datamodule at fit time, saved in the checkpoint and checked again at test/predict time, so a
  model trained on 15 categories never silently remaps them;
- runs test and prediction as the model's own ``validation_step`` (the image alone: no label, no second view,
  what the exported graph does), and gives one-class learning and the learnable/frozen parameter count the model
  READMEs and tests quote.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib import LearningType
from torch import nn

from anomalib_multiclass.category_map import (
    CATEGORY_NAMES_KEY,
    CategoryMismatchError,
    check_batch_categories,
    check_category_names,
    write_metadata,
)
from anomalib_multiclass.data.dataclasses import MultiClassInferenceBatch
from anomalib_multiclass.models.components.checks import (
    MODEL_CLASS_KEY,
    CheckpointModelError,
    check_checkpoint_model,
    check_optimizer_arguments,
    checkpoint_arguments,
    raw_export_outputs,
    refuse_existing_export,
)

if TYPE_CHECKING:
    from anomalib.data import Batch
    from anomalib.metrics import Evaluator
    from anomalib.pre_processing import PreProcessor
    from anomalib.visualization import Visualizer
    from lightning.pytorch import Callback

logger = logging.getLogger(__name__)

ONNX_OPSET_VERSION = 18


class MultiClassMixin:
    """Multi-class behaviour for an ``AnomalibModule`` (put it first in the bases)."""

    category_names: list[str] | None = None
    model: Any  # the torch model, built by each model's constructor
    validation_step: Callable[..., Any]  # each model's own: the image alone in, the torch model's outputs out
    model_input_size: tuple[int, int]  # set by each model before anomalib's __init__ builds the pre-processor
    backbone_name: str
    # INT8 export (INT8_PTQ / INT8_ACQ) keeps the frozen encoder in floating point; True quantizes it too (faster,
    # less accurate: its features are what the model reconstructs, see ``deploy/quantize.py``)
    int8_quantize_encoder: bool = False
    # CPU precision of the layers an INT8 export leaves in floating point, written into the export as its runtime
    # option INFERENCE_PRECISION_HINT (None: the plugin's default, bf16 on a CPU with AVX-512 BF16). OpenVINO's
    # compile_model does not apply it by itself (measured, OpenVINO 2026.4); MultiClassOpenVINOInferencer does.
    int8_float_precision: str | None = None

    @property
    def num_classes(self) -> int | None:
        """Number of categories the model was trained on, if known."""
        return None if self.category_names is None else len(self.category_names)

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

    @torch.no_grad()
    def count_parameters(self) -> dict[str, int]:
        """Learnable and frozen parameter counts of the torch model."""
        parameters = list(self.model.parameters())
        learnable = sum(p.numel() for p in parameters if p.requires_grad)
        return {"learnable": learnable, "frozen": sum(p.numel() for p in parameters) - learnable}

    def _datamodule_category_names(self) -> list[str] | None:
        trainer = getattr(self, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        names = getattr(datamodule, "category_names", None)
        return list(names) if names is not None else None

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's component callbacks, plus one plain line per epoch where no progress bar is seen."""
        from anomalib_multiclass.models.components.progress import epoch_progress_callbacks

        callbacks = list(super().configure_callbacks())  # type: ignore[misc]
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

    def export_metadata(self) -> dict[str, Any]:
        """What travels with an exported model: category names and per-category thresholds."""
        post_processor = getattr(self, "post_processor", None)
        table = getattr(post_processor, "per_class_thresholds", None)
        config = getattr(post_processor, "checkpoint_config", None)
        return {
            "category_names": self.category_names,
            "thresholds": table(self.category_names) if table is not None else {},
            "post_processor": config() if config is not None else {},
        }

    def _write_export_metadata(self, model_path: Path, **extra: Any) -> Path:
        return write_metadata(model_path, {**self.export_metadata(), **extra})

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Anomalib's ONNX export at opset 18, plus ``multiclass_metadata.json`` next to the model.

        anomalib asks for opset 14, below what torch's exporter writes (18): the exporter then tries a
        down-conversion that fails on ``Pad``, prints a traceback and keeps opset 18 anyway. Asking for 18
        gives the same model without the noise; ``opset_version=...`` still overrides it.
        """
        kwargs.setdefault("opset_version", ONNX_OPSET_VERSION)
        refuse_existing_export(args[0] if args else kwargs.get("export_root"), "onnx", (".onnx",), args, kwargs)
        with raw_export_outputs(getattr(self, "post_processor", None)):
            path = super().to_onnx(*args, **kwargs)  # type: ignore[misc]
        self._write_export_metadata(path)
        return path

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:
        """Anomalib's OpenVINO export that anomalib's own ``OpenVINOInferencer`` runs, plus the metadata file.

        anomalib's inferencer makes a ``NumpyImageBatch`` of every model output and fails on a field it does not
        know, so outputs beyond anomalib's (MINT-AD's ``pred_class``, the raw ``raw_pred_score``/``raw_anomaly_map``)
        stay in the graph as named tensors but not as outputs; the metadata lists them (``hidden_outputs``) and
        ``MultiClassOpenVINOInferencer`` reads them.
        """
        from anomalib_multiclass.deploy.inferencer import hide_extra_outputs

        root = args[0] if args else kwargs.get("export_root")
        refuse_existing_export(root, "openvino", (".xml", ".bin"), args, kwargs)
        path = super().to_openvino(*args, **kwargs)  # type: ignore[misc]
        self._write_export_metadata(path, hidden_outputs=hide_extra_outputs(path))
        return path

    def to_torch(self, *args: Any, **kwargs: Any) -> Path:
        """The torch export of anomalib, refused where it would replace an earlier export."""
        refuse_existing_export(args[0] if args else kwargs.get("export_root"), "torch", (".pt",), args, kwargs)
        return super().to_torch(*args, **kwargs)  # type: ignore[misc]

    def _compress_ov_model(
        self,
        model: Any,
        compression_type: Any = None,
        datamodule: Any = None,
        metric: Any = None,
        task: Any = None,
        max_drop: float = 0.01,
    ) -> Any:
        """INT8 compression calibrated on images of every category (``anomalib_multiclass.deploy.quantize``).

        The frozen encoder stays in floating point unless ``int8_quantize_encoder`` is set.
        """
        del task
        from anomalib_multiclass.deploy.compress import compress_openvino_model

        parameters = self.named_parameters()  # type: ignore[attr-defined]
        frozen = None if self.int8_quantize_encoder else [name for name, p in parameters if not p.requires_grad]
        compressed = compress_openvino_model(
            model, compression_type, datamodule, metric=metric, max_drop=max_drop, frozen_parameters=frozen
        )
        if self.int8_float_precision is not None and str(compression_type).lower().endswith(("int8_ptq", "int8_acq")):
            compressed.set_rt_info(self.int8_float_precision, ["runtime_options", "INFERENCE_PRECISION_HINT"])
        return compressed

    def _sync_post_processor(self) -> None:
        resize = getattr(getattr(self, "post_processor", None), "set_num_classes", None)
        if resize is not None and self.category_names is not None:
            resize(len(self.category_names))

    def setup(self, stage: str) -> None:
        """Take the category map from the datamodule at fit time; check it at any other stage."""
        names = self._datamodule_category_names()
        if names is not None:
            if self.category_names is None:
                self.category_names = names
            else:
                check_category_names(self.category_names, names)
        self._sync_post_processor()
        self._check_pre_processor_size()
        if stage == "fit":
            check_optimizer_arguments(self)
        super().setup(stage)  # type: ignore[misc]

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

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's loading without fetching backbone weights: the checkpoint holds them (works offline).

        ``pre_trained`` and ``backbone_weights`` from the checkpoint's hyper-parameters would download or read the
        ImageNet weights only to overwrite them with the checkpoint's; pass them explicitly to override.
        """
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the category map and the model's class name with the weights."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint[CATEGORY_NAMES_KEY] = self.category_names
        checkpoint[MODEL_CLASS_KEY] = type(self).__name__

    @classmethod
    def checkpoint_arguments(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments of a checkpoint's hyper-parameters that shape the network (sizes, backbone...)."""
        return checkpoint_arguments(cls, saved, excluded={*_COMPONENTS, *_NO_WEIGHT_EFFECT})

    @classmethod
    def check_checkpoint_model(cls, checkpoint: dict[str, Any], where: str = "The checkpoint") -> None:
        """Refuse a checkpoint of another model, naming the model it holds and the option that loads it."""
        check_checkpoint_model(cls, checkpoint, [*MultiClassMixin.__subclasses__()], where)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the category map saved with the weights and check the attached data against it.

        Lightning runs ``setup`` (which takes the datamodule's order into a fresh model) before it restores a
        ``ckpt_path``, so the datamodule is checked here again, against the checkpoint's map.
        """
        self.check_checkpoint_model(checkpoint)
        self._adopt_checkpoint_arguments(checkpoint.get("hyper_parameters") or {})
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        names = checkpoint.get(CATEGORY_NAMES_KEY)
        if names is not None:
            self.category_names = list(names)
            given = self._datamodule_category_names()
            if given is not None:
                check_category_names(self.category_names, given)

    def _adopt_checkpoint_arguments(self, saved: dict[str, Any]) -> None:
        """Rebuild the network with the checkpoint's constructor arguments where the given model differs.

        ``anomalib test --model UniAD --ckpt_path ...`` builds the model from the command line's (default)
        arguments before Lightning restores the checkpoint: its weights would not fit any other size. The
        checkpoint's hyper-parameters say how it was built; the network (every sub-module but anomalib's
        components) and the attributes named after arguments are taken from a model built with them.
        """
        current = dict(getattr(self, "hparams", {}))
        arguments = self.checkpoint_arguments(saved)
        differing = {key: value for key, value in arguments.items() if _plain(current.get(key)) != _plain(value)}
        if not differing:
            return
        logger.warning(
            "%s: the checkpoint was built with %s (this model: %s); rebuilding the network with the checkpoint's "
            "arguments.",
            type(self).__name__,
            ", ".join(f"{key}={value!r}" for key, value in differing.items()),
            ", ".join(f"{key}={current.get(key)!r}" for key in differing),
        )
        disabled = dict.fromkeys(_COMPONENTS, False)
        fresh = type(self)(**{**arguments, **disabled, "pre_trained": False, "backbone_weights": None})
        taken = set(fresh._modules) - set(_COMPONENTS)  # sub-modules, including unbuilt (None) ones
        taken |= {name for name in (*arguments, *_DERIVED_ATTRIBUTES) if name in vars(fresh)}
        for name in sorted(taken):
            setattr(self, name, getattr(fresh, name))
        self.hparams.update(arguments)  # type: ignore[attr-defined]


_COMPONENTS = ("pre_processor", "post_processor", "evaluator", "visualizer")
_NO_WEIGHT_EFFECT = {"self", "pre_trained", "backbone_weights"}  # the checkpoint holds the backbone weights
_DERIVED_ATTRIBUTES = ("model", "model_input_size", "backbone_name", "_model_kwargs")  # "model": MINT-AD builds it late


def _plain(value: Any) -> Any:
    """A hyper-parameter in comparable form (tuples as lists, paths as strings)."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value


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
