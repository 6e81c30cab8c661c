"""anomalib's ``OpenVINOInferencer`` for multi-class models.

Export writes ``multiclass_metadata.json`` next to the model file: the ordered category names the model was
trained on and the per-category thresholds/normalisation of the class-aware post-processor. anomalib's
inferencer builds its result from the model outputs by name and knows no ``pred_class``; this subclass keeps
it (and its category name) and, for a model without a classifier, applies a given category's threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.data import NumpyImageBatch
from anomalib.deploy import OpenVINOInferencer

METADATA_FILE = "multiclass_metadata.json"


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    """The metadata written at export, from the folder of ``model_path`` (empty if there is none)."""
    path = Path(model_path).parent / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else {}


class MultiClassOpenVINOInferencer(OpenVINOInferencer):
    """``OpenVINOInferencer`` that returns ``pred_class`` and ``category`` and checks category names.

    Args:
        path: The exported ``model.xml``.
        device: OpenVINO device.
        config: OpenVINO configuration.
        category: For models without a classifier: the category of the images to come, whose threshold
            (learnt per category) decides ``pred_label``. Must be one the model was trained on.
    """

    def __init__(
        self, path: str | Path, device: str | None = "AUTO", config: dict | None = None, category: str | None = None
    ) -> None:
        super().__init__(path=path, device=device, config=config)
        self.metadata = read_metadata(path)
        self.category_names: list[str] = self.metadata.get("category_names") or []
        if category is not None and category not in self.category_names:
            msg = f"Category {category!r} was not seen in training. The model knows {self.category_names}."
            raise ValueError(msg)
        self.category = category

    def predict(self, image: Any) -> NumpyImageBatch:
        """Run the model; keep ``pred_class`` (and its name) next to anomalib's fields."""
        if isinstance(image, torch.Tensor):
            image = image.cpu().numpy()
        if isinstance(image, (str, Path)):
            from anomalib.data.utils import read_image

            image = read_image(image, as_tensor=False)
        image = self.pre_process(image)
        outputs = self.post_process(self.model({self.input_blob.any_name: image}))
        pred_class = outputs.pop("pred_class", None)
        if pred_class is None and self.category is not None:
            outputs.update(self._class_thresholds(outputs, self.category_names.index(self.category)))
        batch = NumpyImageBatch(image=image, **outputs)
        batch.pred_class = pred_class
        if pred_class is not None and self.category_names:
            batch.category = [self.category_names[int(i)] for i in np.asarray(pred_class).reshape(-1)]
        elif self.category is not None:
            batch.category = [self.category] * len(np.asarray(outputs["pred_score"]).reshape(-1))
        return batch

    def _class_thresholds(self, outputs: dict[str, np.ndarray], class_index: int) -> dict[str, np.ndarray]:
        """Re-threshold the exported (globally post-processed) outputs with one category's values."""
        table = self.metadata.get("thresholds", {})
        names = self.category_names
        own, glob = table.get(names[class_index], {}), table.get("global", {})
        if not own or not glob:
            return {}
        result = {}
        for kind, key in (("image", "pred_score"), ("pixel", "anomaly_map")):
            if key not in outputs:
                continue
            raw = _denormalize(np.asarray(outputs[key]), glob, kind)
            low, high, threshold = (own.get(f"{kind}_{n}") for n in ("min", "max", "threshold"))
            if any(v is None or np.isnan(v) for v in (low, high, threshold)):
                continue
            normalized = np.clip((raw - threshold) / max(high - low, 1e-12) + 0.5, 0.0, 1.0)
            result[key] = normalized
            result["pred_label" if kind == "image" else "pred_mask"] = normalized > 0.5
        return result


def _denormalize(values: np.ndarray, glob: dict[str, float], kind: str) -> np.ndarray:
    """Undo the global min-max normalisation of the exported graph (exact inside the clipping range)."""
    low, high, threshold = glob.get(f"{kind}_min"), glob.get(f"{kind}_max"), glob.get(f"{kind}_threshold")
    if any(v is None or np.isnan(v) for v in (low, high, threshold)):
        return values
    return (values - 0.5) * (high - low) + threshold
