"""Every anomalib model on a multi-category datamodule reports the per-category table, with no extra argument.

``anomalib train --model Padim --data MultiClassFolder ...`` builds Padim with anomalib's default evaluator
(one pooled image AUROC). The registration hook applies :func:`install_per_category_default` to anomalib's
``AnomalibModule`` when ``anomalib.models`` is imported: an evaluator that anomalib built by default (the model's
``evaluator=True``) is replaced by a :class:`PerCategoryEvaluator` when the model is fitted, tested or validated on
a datamodule that knows its categories (``category_names``). An evaluator passed explicitly
(``--model.evaluator ...``, ``evaluator=...``) is never touched, nor is any model on anomalib's own datamodules.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_DEFAULT_MARK = "_anomalib_multiclass_default"
_PATCHED = "_anomalib_multiclass_per_category_default"


def is_default_evaluator(evaluator: Any) -> bool:
    """True for an evaluator anomalib built from a model's ``configure_evaluator`` (not one the user passed)."""
    return bool(getattr(evaluator, _DEFAULT_MARK, False))


def use_per_category_evaluator(model: Any) -> bool:
    """Swap ``model``'s default evaluator for the per-category one if its data has categories; True if swapped."""
    from anomalib_multiclass.evaluation.per_category import PerCategoryEvaluator

    trainer = getattr(model, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    evaluator = getattr(model, "evaluator", None)
    if getattr(datamodule, "category_names", None) is None or isinstance(evaluator, PerCategoryEvaluator):
        return False
    if not is_default_evaluator(evaluator):
        if evaluator is not None:
            logger.info("%s keeps the evaluator it was given (%s).", type(model).__name__, type(evaluator).__name__)
        return False
    model.evaluator = PerCategoryEvaluator()
    logger.info(
        "%s on %s: per-category evaluation (anomalib's default evaluator replaced; pass --model.evaluator to choose "
        "another).",
        type(model).__name__,
        type(datamodule).__name__,
    )
    return True


def install_per_category_default(module_class: type) -> None:
    """Patch anomalib's ``AnomalibModule``: mark default evaluators, swap them in ``configure_callbacks`` (once)."""
    if getattr(module_class, _PATCHED, False):
        return
    from anomalib.metrics import Evaluator

    resolve = module_class._resolve_component  # a staticmethod, read through the class: a plain function
    configure_callbacks = module_class.configure_callbacks

    def _resolve_component(component: Any, component_type: type, default_callable: Any) -> Any:
        resolved = resolve(component, component_type, default_callable)
        if component is True and component_type is Evaluator and resolved is not None:
            setattr(resolved, _DEFAULT_MARK, True)
        return resolved

    def configure_callbacks_with_categories(self: Any) -> Any:
        use_per_category_evaluator(self)
        return configure_callbacks(self)

    configure_callbacks_with_categories.__doc__ = configure_callbacks.__doc__
    module_class._resolve_component = staticmethod(_resolve_component)
    module_class.configure_callbacks = configure_callbacks_with_categories
    setattr(module_class, _PATCHED, True)
