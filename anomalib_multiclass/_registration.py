"""Make anomalib find this package's models and datamodules by name; the list of every place it touches anomalib.

anomalib 2.7 has no plugin entry points: ``get_model``, ``list_models`` and the CLI's short names only see
classes that are already imported, and ``get_model({"class_path": ...})`` only imports from an allow-list.
The installed ``anomalib_multiclass.pth`` file imports this module at interpreter start-up; it only adds an
import hook (no torch, no anomalib). When a program imports ``anomalib.models`` or ``anomalib.data``, the hook
imports ours right after, so ``anomalib train --model UniAD --data MultiClassMVTecAD`` and
``get_model("uniad")`` work; programs that never import anomalib never pay for it.

The package is written for anomalib 2.7.* (:data:`SUPPORTED_ANOMALIB`). On another version the hook warns once,
naming the installed version and the supported one, then applies each patch below on its own: one that no longer
fits is skipped with a warning naming it, never a crash inside the user's ``import anomalib.models``.
``tests/unit/test_anomalib_contract.py`` pins every anomalib behaviour listed here, so a new anomalib release that
changes one fails there first.

Every touch on anomalib, and the anomalib behaviour it needs:

1. **Import hook** (here, from ``anomalib_multiclass.pth``): the modules ``anomalib.models``, ``anomalib.data`` and
   ``anomalib.cli.cli`` exist under those names and are imported by ``get_model``/``get_datamodule``/the CLI.
2. **Short names** (:func:`_publish`): ``get_model``/``get_datamodule`` resolve a bare ``class_path`` with
   ``getattr(anomalib.models | anomalib.data, name)``; ``list_models`` walks ``AnomalibModule.__subclasses__()``
   (our models subclass ``AnomalibModule`` directly).
3. **Allow-list** (:func:`_after_import`): ``anomalib.models.ALLOWED_MODULES`` is a ``set`` of module paths that
   ``get_model({"class_path": "a.b.C"})`` accepts; ``anomalib_multiclass.models`` is added to it.
4. **Default evaluator marked** (``evaluation/default.py``): ``AnomalibModule._resolve_component(component,
   component_type, default_callable)`` is a staticmethod that ``AnomalibModule.__init__`` calls with ``Evaluator``
   for the evaluator, returns ``default_callable()`` for ``True``, the component itself for an instance, ``None``
   for ``False``. Wrapped to mark the evaluators anomalib built by default.
5. **Per-category evaluator and pictures** (``evaluation/default.py``, ``visualization.py``):
   ``AnomalibModule.configure_callbacks(self)`` returns the components that are Lightning callbacks and runs once
   the trainer (and its datamodule) is attached. Wrapped twice: swap a default evaluator for the per-category one,
   and anomalib's ``ImageVisualizer`` for one that names pictures by category.
6. **Evaluator before the post-processor** (``evaluation/per_category.py``): anomalib's ``PostProcessor`` is a
   callback with ``post_process_batch``; our evaluator moves itself before it in ``trainer.callbacks`` (a list).
7. **CLI seeding and checkpoint arguments** (``cli.py``): ``AnomalibCLI.before_instantiate_classes(self)`` runs
   after parsing, before any class is built, with ``self.config["subcommand"]`` and that section's
   ``seed_everything``, ``ckpt_path`` and ``model``; ``AnomalibCLI._run_subcommand(self)`` runs the subcommand.
8. **Fresh result folders** (``cli.py``): ``Engine._setup_workspace(self, model, ..., versioned_dir=False)`` sets
   ``self._cache.args["default_root_dir"]``; ``Engine.predict`` builds ``PredictDataset(path)`` from the name
   ``anomalib.engine.engine.PredictDataset`` (replaced by one that skips unreadable files).
9. **Trainer arguments** (``models/components/base.py``): the engine copies ``model.trainer_arguments`` into the
   trainer's (gradient clipping, no sanity validation), the model's value winning.
10. **Hyper-parameters** (``models/components/base.py``, ``cli.py``): ``AnomalibModule.__init__`` calls
    ``save_hyperparameters`` (a model's constructor arguments travel in the checkpoint's ``hyper_parameters``).
11. **Export** (``models/components/base.py``): ``to_torch(export_root, model_file_name)``,
    ``to_onnx(export_root, model_file_name, input_size, **kwargs)`` passing ``kwargs`` (``opset_version``) to
    ``torch.onnx.export``, and ``to_openvino(...)``, which calls the private ``self._compress_ov_model(model,
    compression_type, datamodule, metric, task, max_drop)`` for INT8; our models override that method.
12. **Building blocks imported** (LGC, Omni-AD, RLR): ``GaussianBlur2d``, Reverse Distillation's
    ``get_decoder``, ``get_bottleneck_layer``, ``DecoderBasicBlock`` and ``ReverseDistillationLoss``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from types import ModuleType
from typing import Any

_COMPANIONS = {
    "anomalib.models": "anomalib_multiclass.models",
    "anomalib.data": "anomalib_multiclass.data",
}


_ANOMALIB_OF = {ours: theirs for theirs, ours in _COMPANIONS.items()}
# modules whose code has run to the end (recorded by the loader below, or found imported at install time): the
# hook never relies on how a module's code is ordered
_FINISHED: set[str] = set()
_ANOMALIB_CLI = "anomalib.cli.cli"  # seeded as Lightning's CLI seeds (see anomalib_multiclass/cli.py)
SUPPORTED_ANOMALIB = "2.7"  # the anomalib minor version this package is written and tested for (pyproject: 2.7.*)
_VERSION_CHECKED: list[bool] = []  # one warning per process


def anomalib_version() -> str | None:
    """The version of the imported anomalib (``None`` while it is not imported)."""
    module = sys.modules.get("anomalib")
    return None if module is None else str(getattr(module, "__version__", "unknown"))


def is_supported_anomalib(version: str | None) -> bool:
    """True for an anomalib version of the supported minor release (``2.7.x``)."""
    return version is not None and version.split(".")[:2] == SUPPORTED_ANOMALIB.split(".")


def check_anomalib_version() -> bool:
    """Warn (once) when the imported anomalib is not the supported release; True if it is."""
    version = anomalib_version()
    supported = is_supported_anomalib(version)
    if not supported and not _VERSION_CHECKED:
        import warnings

        warnings.warn(
            f"anomalib-multiclass supports anomalib {SUPPORTED_ANOMALIB}.* (pyproject: anomalib==2.7.*), but "
            f"anomalib {version} is installed. Its models are registered and anomalib is adapted as for "
            f"{SUPPORTED_ANOMALIB}; an adaptation that no longer fits is skipped with a warning of its own. "
            f"Install a supported anomalib: pip install 'anomalib=={SUPPORTED_ANOMALIB}.*'.",
            stacklevel=3,
        )
    _VERSION_CHECKED.append(True)
    return supported


def _apply(what: str, patch: Any, *args: Any) -> None:
    """Apply one adaptation of anomalib; on failure warn, naming it and the anomalib version, and go on."""
    try:
        patch(*args)
    except Exception as error:
        import warnings

        warnings.warn(
            f"anomalib-multiclass could not adapt anomalib {anomalib_version()} ({what}; supported: anomalib "
            f"{SUPPORTED_ANOMALIB}.*): {error!r}. The rest of the package works; this adaptation is off.",
            stacklevel=3,
        )


def _allow_class_paths(models_module: ModuleType) -> None:
    """``get_model({"class_path": "anomalib_multiclass.models.UniAD"})``: add our module to the allow-list."""
    allowed = models_module.ALLOWED_MODULES
    if not isinstance(allowed, set):
        msg = f"anomalib.models.ALLOWED_MODULES is a {type(allowed).__name__}, not a set"
        raise TypeError(msg)
    allowed.add("anomalib_multiclass.models")


def _install_cli_seeding(cli_module: ModuleType) -> None:
    from anomalib_multiclass.cli import install_cli_seeding

    install_cli_seeding(cli_module)


def _install_per_category_default(models_module: ModuleType) -> None:
    from anomalib_multiclass.evaluation.default import install_per_category_default

    install_per_category_default(models_module.AnomalibModule)


def _install_category_pictures(models_module: ModuleType) -> None:
    from anomalib_multiclass.visualization import install_category_pictures

    install_category_pictures(models_module.AnomalibModule)


def _publish(anomalib_name: str) -> None:
    """Expose our models/datamodules as attributes of ``anomalib.models``/``anomalib.data``.

    ``get_model({"class_path": "UniAD"})`` and ``get_datamodule({"class_path": "MultiClassFolder"})`` (used by
    anomalib's benchmark pipeline) look short names up there. Only models and datamodules, never over an existing
    anomalib name, and only once both modules are fully imported.
    """
    companion_name = _COMPANIONS[anomalib_name]
    if not {anomalib_name, companion_name} <= _FINISHED:
        return  # the other half is still being imported; its own hook finishes the job
    target, companion = sys.modules[anomalib_name], sys.modules[companion_name]
    from lightning.pytorch import LightningDataModule, LightningModule

    for public in getattr(companion, "__all__", None) or dir(companion):
        value = getattr(companion, public, None)
        wanted = isinstance(value, type) and issubclass(value, (LightningModule, LightningDataModule))
        if wanted and not hasattr(target, public):
            setattr(target, public, value)


def _after_import(name: str) -> None:
    if name in _ANOMALIB_OF:  # one of ours finished importing (possibly before anomalib's module did)
        _publish(_ANOMALIB_OF[name])
        return
    if not _VERSION_CHECKED:
        check_anomalib_version()
    if name == _ANOMALIB_CLI:
        _apply("CLI seeding, checkpoint arguments and fresh result folders", _install_cli_seeding, sys.modules[name])
        return
    if name == "anomalib.models":
        module = sys.modules[name]
        _apply("class paths allowed in get_model", _allow_class_paths, module)
        _apply("per-category default evaluator", _install_per_category_default, module)
        _apply("pictures named by category", _install_category_pictures, module)
    try:
        companion = importlib.import_module(_COMPANIONS[name])
    except Exception as error:
        import warnings

        warnings.warn(f"anomalib-multiclass could not register {_COMPANIONS[name]}: {error!r}", stacklevel=2)
        return
    if not getattr(getattr(companion, "__spec__", None), "_initializing", False):  # not a circular partial import
        _FINISHED.add(_COMPANIONS[name])
    _publish(name)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then imports the companion module (or publishes ours into anomalib's)."""

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _FINISHED.add(self.name)
        _after_import(self.name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.loader, attribute)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``anomalib.models``/``anomalib.data`` (and our two companions) with the other finders, wraps the loader."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _COMPANIONS and fullname not in _ANOMALIB_OF and fullname != _ANOMALIB_CLI:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Add the hook once; if anomalib is already imported, register right away."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    for name in (*_COMPANIONS, *_ANOMALIB_OF, _ANOMALIB_CLI):
        if name in sys.modules:
            _FINISHED.add(name)
    for name in (*_COMPANIONS, _ANOMALIB_CLI):
        if name in sys.modules:
            _after_import(name)


def register() -> None:
    """Import our models and datamodules now (for programs started before the package was installed)."""
    for name in _COMPANIONS:
        __import__(name)
        _FINISHED.update(n for n in (name, _COMPANIONS[name]) if n in sys.modules)
        _after_import(name)
