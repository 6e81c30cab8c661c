"""Checkpoints of a multi-class model.

The category map and the model's class are saved with the weights; a checkpoint of other sizes is loaded into a
network rebuilt from the checkpoint's own arguments; backbone weights are never fetched only to be overwritten.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_multiclass.category_map import CATEGORY_NAMES_KEY, check_category_names
from anomalib_multiclass.models.components.categories import datamodule_category_names
from anomalib_multiclass.models.components.checks import (
    MODEL_CLASS_KEY,
    check_checkpoint_model,
    checkpoint_arguments,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # the mixins are read as what they extend: an AnomalibModule (super() calls checked)
    from anomalib.models.components import AnomalibModule as ModuleBase
else:
    ModuleBase = object


class CheckpointMixin(ModuleBase):
    """Saves the category map and model class with the weights; loads a checkpoint into the network it fits."""

    category_names: list[str] | None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's loading without fetching backbone weights: the checkpoint holds them (works offline).

        ``pre_trained`` and ``backbone_weights`` from the checkpoint's hyper-parameters would download or read the
        ImageNet weights only to overwrite them with the checkpoint's; pass them explicitly to override.
        """
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the category map and the model's class name with the weights."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[CATEGORY_NAMES_KEY] = self.category_names
        checkpoint[MODEL_CLASS_KEY] = type(self).__name__

    @classmethod
    def checkpoint_arguments(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments of a checkpoint's hyper-parameters that shape the network (sizes, backbone...)."""
        return checkpoint_arguments(cls, saved, excluded={*_COMPONENTS, *_NO_WEIGHT_EFFECT})

    @classmethod
    def check_checkpoint_model(cls, checkpoint: dict[str, Any], where: str = "The checkpoint") -> None:
        """Refuse a checkpoint of another model, naming the model it holds and the option that loads it."""
        check_checkpoint_model(cls, checkpoint, _model_classes(), where)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the category map saved with the weights and check the attached data against it.

        Lightning runs ``setup`` (which takes the datamodule's order into a fresh model) before it restores a
        ``ckpt_path``, so the datamodule is checked here again, against the checkpoint's map.
        """
        self.check_checkpoint_model(checkpoint)
        self._adopt_checkpoint_arguments(checkpoint.get("hyper_parameters") or {})
        super().on_load_checkpoint(checkpoint)
        names = checkpoint.get(CATEGORY_NAMES_KEY)
        if names is not None:
            self.category_names = list(names)
            given = datamodule_category_names(self)
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
        self.hparams.update(arguments)


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


def _model_classes() -> list[type]:
    """Every model class of the package (the classes built on these mixins that are not mixins themselves)."""
    found: list[type] = []
    pending: list[type] = [CheckpointMixin]
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if not subclass.__name__.endswith("Mixin") and subclass not in found:
                found.append(subclass)
    return found
