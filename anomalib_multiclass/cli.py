"""What the plain ``anomalib`` command needs from us beyond finding our classes.

anomalib 2.7's CLI declares ``--seed_everything`` (default ``True``: a random seed) but never calls
``seed_everything``, so a seed in a config file changes nothing and two runs of one config differ. The
registration hook (``_registration.py``) applies :func:`install_cli_seeding` when ``anomalib.cli.cli`` is
imported: the CLI then seeds as Lightning's own CLI does, before any class is instantiated (model weights, data
splits, loader order), and writes the seed it used back into the saved ``config.yaml``.

The same hook makes ``test``, ``predict`` and ``export`` with ``--ckpt_path`` build our models with the checkpoint's
constructor arguments before anything is instantiated (without the training config, the model's input size, and
so the datamodule's resize, would be the defaults), refuses a checkpoint of another model by name, gives
``test`` and ``predict`` a new version folder instead of the last run's (whose results they replaced), and makes
``predict --data <folder>`` skip unreadable files with a warning naming each.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED = "_anomalib_multiclass_seeding"


def seed_from_config(config: Any, subcommand: str) -> int | None:
    """Seed everything as ``config[subcommand].seed_everything`` asks; return the seed (``None``: not seeded).

    An int seeds with that value, ``True`` with a random seed (Lightning logs it), ``False`` leaves the random
    state alone. Dataloader workers are seeded too (``workers=True``).
    """
    from lightning.pytorch import seed_everything

    section = config.get(subcommand) if hasattr(config, "get") else None
    value = section.get("seed_everything") if section is not None and hasattr(section, "get") else None
    if value is None or value is False:
        return None
    seed = seed_everything(None if value is True else int(value), workers=True)
    section["seed_everything"] = seed
    return seed


def install_cli_seeding(module: ModuleType) -> None:
    """Make ``module.AnomalibCLI`` seed before it instantiates the classes (idempotent)."""
    cli_class = getattr(module, "AnomalibCLI", None)
    if cli_class is None or getattr(cli_class, _PATCHED, False):
        return
    original = cli_class.before_instantiate_classes

    def before_instantiate_classes(self: Any) -> None:
        original(self)
        seed_from_config(self.config, self.config["subcommand"])
        adopt_checkpoint_arguments(self.config, self.config["subcommand"])

    before_instantiate_classes.__doc__ = original.__doc__
    cli_class.before_instantiate_classes = before_instantiate_classes
    run_subcommand = cli_class._run_subcommand

    def _run_subcommand(self: Any) -> None:
        try:
            run_subcommand(self)
        except BaseException:
            remove_empty_run_folder(getattr(getattr(self, "engine", None), "_anomalib_multiclass_run_dir", None))
            raise

    _run_subcommand.__doc__ = run_subcommand.__doc__
    cli_class._run_subcommand = _run_subcommand
    setattr(cli_class, _PATCHED, True)
    install_fresh_result_folders()


def remove_empty_run_folder(folder: Path | None) -> None:
    """Remove the version folder a failed run made if it holds nothing but its ``config.yaml``; fix ``latest``."""
    if folder is None or not folder.is_dir() or any(p.name != "config.yaml" for p in folder.iterdir()):
        return
    import shutil

    shutil.rmtree(folder)
    latest = folder.parent / "latest"
    versions = sorted(
        (p for p in folder.parent.glob("v*") if p.is_dir() and p.name[1:].isdigit()), key=lambda p: int(p.name[1:])
    )
    if latest.is_symlink():
        latest.unlink()
        if versions:
            latest.symlink_to(versions[-1], target_is_directory=True)
    logger.info("The run failed before writing anything: its folder %s was removed.", folder)


def _model_class(model_config: Any) -> type | None:
    """The class a CLI model section names, if it is one of ours."""
    import importlib

    class_path = model_config.get("class_path") if hasattr(model_config, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    from anomalib_multiclass.models.components.base import MultiClassMixin

    return cls if isinstance(cls, type) and issubclass(cls, MultiClassMixin) else None


def adopt_checkpoint_arguments(config: Any, subcommand: str) -> dict[str, Any]:
    """Set our model's network arguments from ``--ckpt_path``'s hyper-parameters before the model is built.

    ``anomalib test --model UniAD --ckpt_path model.ckpt`` otherwise builds UniAD with its default input size, and
    the datamodule takes its resize from the model's pre-processor before the checkpoint is read: the table was
    computed at another size than the one trained. A checkpoint of another model is refused by name. Returns the
    arguments taken.
    """
    section = config.get(subcommand) if hasattr(config, "get") else None
    if subcommand not in {"test", "predict", "export", "validate"} or section is None:
        return {}
    ckpt_path, model_config = section.get("ckpt_path"), section.get("model")
    cls = _model_class(model_config) if ckpt_path and model_config is not None else None
    if cls is None:
        return {}
    import torch

    checkpoint = torch.load(str(ckpt_path), map_location="cpu", weights_only=False, mmap=True)
    cls.check_checkpoint_model(checkpoint, where=str(ckpt_path))
    arguments = cls.checkpoint_arguments(checkpoint.get("hyper_parameters") or {})
    init_args = model_config.get("init_args")
    if init_args is None or not arguments:
        return {}
    # the checkpoint holds the backbone's weights: fetching ImageNet ones to overwrite them needs a network
    init_args["pre_trained"], init_args["backbone_weights"] = False, None
    taken = {}
    for key, value in arguments.items():
        given = init_args.get(key) if hasattr(init_args, "get") else None
        if _plain(given) != _plain(value):
            taken[key] = value
        init_args[key] = value
    if taken:
        logger.warning(
            "%s: building %s with the checkpoint's arguments %s (the command line's or config's differ).",
            ckpt_path,
            cls.__name__,
            ", ".join(f"{key}={value!r}" for key, value in taken.items()),
        )
    return arguments


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def install_fresh_result_folders() -> None:
    """``anomalib test``/``predict`` write into a new version folder, never into an earlier run's (idempotent).

    anomalib's ``Engine.test``/``predict`` resolve ``<root>/<Model>/<Data>/<category>/latest``: the last training
    run's folder, whose ``per_category_metrics.*``, ``config.yaml`` and images they replaced. A fresh engine (what
    the command line makes) now gets the next ``v<N>``; ``anomalib train``'s own test, in the engine that trained,
    still writes next to its checkpoint.
    """
    from anomalib.engine import Engine

    original = Engine._setup_workspace
    if getattr(original, _PATCHED, False):
        return

    def _setup_workspace(self: Any, *args: Any, versioned_dir: bool = False, **kwargs: Any) -> None:
        fresh = getattr(self, "_trainer", None) is None
        original(self, *args, versioned_dir=versioned_dir or fresh, **kwargs)
        if versioned_dir or fresh:
            self._anomalib_multiclass_run_dir = Path(self._cache.args["default_root_dir"])

    _setup_workspace.__doc__ = original.__doc__
    setattr(_setup_workspace, _PATCHED, True)
    Engine._setup_workspace = _setup_workspace

    # `anomalib predict --data <folder>`: unreadable files skipped by name, 16-bit images with their range
    import anomalib.engine.engine as engine_module

    from anomalib_multiclass.data.predict import ReadablePredictDataset

    engine_module.PredictDataset = ReadablePredictDataset
