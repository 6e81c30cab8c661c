"""Make anomalib find this package's models and datamodules by name, with no step beyond installing it.

anomalib 2.7 has no plugin entry points: ``get_model``, ``list_models`` and the CLI's short names only see
classes that are already imported, and ``get_model({"class_path": ...})`` only imports from an allow-list.
The installed ``anomalib_multiclass.pth`` file imports this module at interpreter start-up; it only adds an
import hook (no torch, no anomalib). When a program imports ``anomalib.models`` or ``anomalib.data``, the hook
imports ours right after, so ``anomalib train --model UniAD --data MultiClassMVTecAD`` and
``get_model("uniad")`` work; programs that never import anomalib never pay for it.
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
    if name == _ANOMALIB_CLI:
        from anomalib_multiclass.cli import install_cli_seeding

        install_cli_seeding(sys.modules[name])
        return
    if name in _ANOMALIB_OF:  # one of ours finished importing (possibly before anomalib's module did)
        _publish(_ANOMALIB_OF[name])
        return
    if name == "anomalib.models":
        allowed = getattr(sys.modules[name], "ALLOWED_MODULES", None)
        if isinstance(allowed, set):
            allowed.add("anomalib_multiclass.models")
        from anomalib_multiclass.evaluation.default import install_per_category_default

        install_per_category_default(sys.modules[name].AnomalibModule)
        from anomalib_multiclass.visualization import install_category_pictures

        install_category_pictures(sys.modules[name].AnomalibModule)
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
