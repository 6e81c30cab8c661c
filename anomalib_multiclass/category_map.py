"""The category map: the one neutral owner of category names, their checks and the export metadata.

Data, models, post-processing and deploy all import it downward; it imports nothing of the package. A model
keeps the ordered category names it was trained on (``category_names[class_index]`` is the category of that
index), saves them in its checkpoint under :data:`CATEGORY_NAMES_KEY` and writes them, with the post-processor's
per-category thresholds, into :data:`METADATA_FILE` next to an exported model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CATEGORY_NAMES_KEY = "anomalib_multiclass_category_names"
METADATA_FILE = "multiclass_metadata.json"


class CategoryMismatchError(ValueError):
    """The data's categories differ from the ones the model was trained on."""


def check_category_names(trained: list[str], given: list[str]) -> None:
    """Raise a clear error unless ``given`` uses the trained categories with the same indices.

    A subset of the trained categories, in the trained order, is accepted as long as the datamodule
    maps each name to the trained index; anything else is a mismatch.
    """
    if given == trained:
        return
    unknown = [name for name in given if name not in trained]
    if unknown:
        msg = (
            f"Categories {unknown} were not seen in training. The model was trained on {trained}. "
            "Test on those categories, or retrain with them."
        )
        raise CategoryMismatchError(msg)
    msg = (
        f"The datamodule numbers its categories {given}, the model was trained with {trained}. "
        f"Pass the trained order to the datamodule so class indices keep their meaning: "
        f'`category_names={trained}` (command line: `--data.category_names "[{", ".join(trained)}]"`); '
        "`categories` may then be any subset of them."
    )
    raise CategoryMismatchError(msg)


def check_batch_categories(trained: list[str] | None, batch: Any) -> None:
    """Raise unless every ``(category, class_index)`` pair of ``batch`` has the trained meaning."""
    categories, classes = getattr(batch, "category", None), getattr(batch, "class_index", None)
    if trained is None or categories is None or not isinstance(classes, torch.Tensor):
        return
    for category, index in dict.fromkeys(zip(categories, classes.reshape(-1).tolist(), strict=True)):
        if 0 <= index < len(trained) and trained[index] == category:
            continue
        if category not in trained:
            check_category_names(trained, [category])  # raises: not seen in training
        msg = (
            f"The data gives category {category!r} the class index {index}; the model was trained with it as "
            f"{trained.index(category)} (order {trained}). Build the dataset or datamodule with "
            f"`category_names={trained}`."
        )
        raise CategoryMismatchError(msg)


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    """The metadata written at export, from the folder of ``model_path`` (empty if there is none)."""
    path = Path(model_path).parent / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_metadata(model_path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``metadata`` as :data:`METADATA_FILE` next to the exported model ``model_path``."""
    path = Path(model_path).parent / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2))
    return path
