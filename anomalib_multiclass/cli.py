"""What the plain ``anomalib`` command needs from us beyond finding our classes.

anomalib 2.7's CLI declares ``--seed_everything`` (default ``True``: a random seed) but never calls
``seed_everything``, so a seed in a config file changes nothing and two runs of one config differ. The
registration hook (``_registration.py``) applies :func:`install_cli_seeding` when ``anomalib.cli.cli`` is
imported: the CLI then seeds as Lightning's own CLI does, before any class is instantiated (model weights, data
splits, loader order), and writes the seed it used back into the saved ``config.yaml``.
"""

from __future__ import annotations

import logging
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

    before_instantiate_classes.__doc__ = original.__doc__
    cli_class.before_instantiate_classes = before_instantiate_classes
    setattr(cli_class, _PATCHED, True)
