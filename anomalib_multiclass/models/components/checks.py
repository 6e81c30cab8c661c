"""Checks on what a model is given before it runs (checkpoints, optimizer values, export folders), and export mode.

Each refuses with the value or file and the fix, where torch, Lightning or the file system would fail deep inside
(a state_dict key dump, an optimizer's ``Invalid learning rate``) or silently replace an earlier export.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL_CLASS_KEY = "anomalib_multiclass_model"


class CheckpointModelError(ValueError):
    """A checkpoint of one model was given to another."""


def checkpoint_arguments(cls: type, saved: dict[str, Any], excluded: Iterable[str]) -> dict[str, Any]:
    """The entries of ``saved`` (a checkpoint's hyper-parameters) that ``cls`` takes, less ``excluded``."""
    accepted = set(inspect.signature(cls.__init__).parameters) - set(excluded)
    return {key: value for key, value in saved.items() if key in accepted}


def check_checkpoint_model(
    cls: type, checkpoint: dict[str, Any], candidates: Iterable[type], where: str = "The checkpoint"
) -> None:
    """Raise unless ``checkpoint`` holds a ``cls``; name the model it holds (one of ``candidates``).

    Checkpoints name their model class (:data:`MODEL_CLASS_KEY`); for older ones, the model is the candidate whose
    constructor takes every saved hyper-parameter.
    """
    saved_class = checkpoint.get(MODEL_CLASS_KEY)
    if saved_class is None:
        arguments = {key for key in checkpoint.get("hyper_parameters") or {} if not key.startswith("_")}

        def takes_all(candidate: type) -> bool:
            return not (arguments - set(inspect.signature(candidate.__init__).parameters))

        if not arguments or takes_all(cls):
            return
        matches = [candidate.__name__ for candidate in candidates if takes_all(candidate)]
        saved_class = matches[0] if len(matches) == 1 else None
    if saved_class == cls.__name__:
        return
    holds = f"a {saved_class} model" if saved_class else "another model"
    fix = f"--model {saved_class}; Python: {saved_class}.load_from_checkpoint(...)" if saved_class else "its class"
    msg = f"{where} holds {holds}, not a {cls.__name__}: its weights do not fit. Load it as that model ({fix})."
    raise CheckpointModelError(msg)


def check_optimizer_arguments(model: Any) -> None:
    """A learning rate or weight decay torch would reject deep inside, refused by name before training."""
    defaults = {
        name: parameter.default for name, parameter in inspect.signature(type(model).__init__).parameters.items()
    }
    for name, positive in (("lr", True), ("weight_decay", False)):
        value = getattr(model, name, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if (value > 0 if positive else value >= 0) and math.isfinite(value):
            continue
        need = "a positive number" if positive else "zero or a positive number"
        msg = (
            f"{type(model).__name__}: {name}={value} is not a valid {name}; it must be {need} "
            f"(default {defaults.get(name)}). Set --model.{name} <value> (config: model.init_args.{name})."
        )
        raise ValueError(msg)


def refuse_existing_export(
    export_root: Any, kind: str, suffixes: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Raise where an export would silently replace an earlier one (``<root>/weights/<kind>/<name>.*``)."""
    if export_root is None:
        return
    name = args[1] if len(args) > 1 else kwargs.get("model_file_name", "model")
    folder = Path(export_root) / "weights" / kind
    existing = [folder / f"{name}{suffix}" for suffix in suffixes if (folder / f"{name}{suffix}").exists()]
    if existing:
        msg = (
            f"{existing[0]} already exists (an earlier export); exporting again would replace it. Choose another "
            f"folder (command line: --export_root <folder>; Python: export_root=...) or delete {folder} first."
        )
        raise FileExistsError(msg)


@contextmanager
def raw_export_outputs(post_processor: Any) -> Iterator[None]:
    """Trace the graph with the raw score and map as extra outputs (``raw_pred_score``, ``raw_anomaly_map``).

    anomalib's fields keep their meaning (global values, or MINT-AD's predicted class); the raw ones let
    ``MultiClassOpenVINOInferencer(category=...)`` and ONNX users normalise once with the image's category.
    """
    saved = getattr(post_processor, "export_raw_outputs", None)
    if saved is not None:
        post_processor.export_raw_outputs = True
    try:
        yield
    finally:
        if saved is not None:
            post_processor.export_raw_outputs = saved
