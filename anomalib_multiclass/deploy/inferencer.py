"""anomalib's ``OpenVINOInferencer`` for multi-class models.

Export writes ``multiclass_metadata.json`` next to the model file: the ordered category names the model was
trained on and the per-category thresholds/normalisation of the class-aware post-processor. The exported graph
outputs anomalib's fields (``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask``: normalised with the
global values, or with the class MINT-AD predicts) and, as named tensors, MINT-AD's ``pred_class`` and the raw
score and map (``raw_pred_score``, ``raw_anomaly_map``). anomalib's inferencer builds its result from the outputs
by name and refuses names it does not know, so the IR keeps those as tensors inside the graph, not as outputs
(listed in the metadata as ``hidden_outputs``). This subclass makes them outputs again, returns ``pred_class`` with
its category name and, given ``category=``, normalises the raw outputs once with that category's values: the
scores, labels and maps PyTorch gives for images of that category.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anomalib.data import InferenceBatch, NumpyImageBatch
from anomalib.deploy import OpenVINOInferencer, TorchInferencer

from anomalib_multiclass.category_map import METADATA_FILE, read_metadata
from anomalib_multiclass.data.dataclasses import RAW_OUTPUTS, MultiClassImageBatch
from anomalib_multiclass.data.image import as_rgb_array, read_rgb, to_rgb_array
from anomalib_multiclass.post_processing import ClassAwarePostProcessor

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)


def hide_extra_outputs(model: ov.Model) -> list[str]:
    """Turn the outputs of an exported model that anomalib's ``InferenceBatch`` lacks into internal named tensors.

    anomalib's ``OpenVINOInferencer`` passes every output to ``NumpyImageBatch(...)`` by name, which refuses unknown
    fields (``pred_class``). An output the graph itself uses (MINT-AD's class selects the per-class threshold)
    keeps its node and tensor name, so ``model.add_outputs(name)`` brings it back; one that nothing uses is
    dropped with a log line. Changes ``model`` in place; returns the hidden names.
    """
    hidden: list[str] = []
    for result in model.get_results():
        names = sorted(result.output(0).get_names())
        if set(names) & set(InferenceBatch._fields):
            continue
        used = any(target.get_node() != result for target in result.input_value(0).get_target_inputs())
        model.remove_result(result)
        if used:
            hidden += names
        else:
            logger.warning(
                "Exported model: output %s is not used by the rest of the graph and is dropped (anomalib's "
                "OpenVINOInferencer cannot read extra outputs).",
                names,
            )
    return hidden


def runtime_options(path: str | Path) -> dict[str, str]:
    """The ``runtime_options`` an export carries in its IR (e.g. INT8 RLR: ``INFERENCE_PRECISION_HINT=f32``).

    OpenVINO 2026.4's ``compile_model`` does not apply them for the CPU (its precision stays bf16), so the
    inferencer passes them as configuration; a ``config`` given by the caller wins.
    """
    import xml.etree.ElementTree as ET

    xml = Path(path).with_suffix(".xml")
    if not xml.is_file():
        return {}
    options = ET.parse(xml).getroot().find("rt_info/runtime_options")
    return {} if options is None else {child.tag: str(child.get("value")) for child in options}


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
        super().__init__(path=path, device=device, config={**runtime_options(path), **(config or {})})
        self.path = Path(path)
        self.metadata = read_metadata(path)
        self.category_names: list[str] = self.metadata.get("category_names") or []
        self.category = self._checked_category(category)
        self._post_processor: ClassAwarePostProcessor | None = None

    def load_model(self, path: str | Path | tuple[bytes, bytes]) -> tuple[Any, Any, Any]:
        """Load as anomalib does, with the outputs hidden at export (``pred_class``) made outputs again."""
        hidden = [] if isinstance(path, tuple) else read_metadata(path).get("hidden_outputs", [])
        if not hidden:
            return super().load_model(path)
        import openvino as ov

        core = ov.Core()
        model = core.read_model(Path(path).with_suffix(".xml"))
        try:
            model.add_outputs(hidden)
        except RuntimeError as error:
            msg = f"{path} has no tensor {hidden} although {METADATA_FILE} lists it. Export the model again."
            raise ValueError(msg) from error
        compiled = core.compile_model(model=model, device_name=self.device, config=self.config)
        return compiled.input(0), compiled.output(0), compiled

    def _checked_category(self, category: str | None) -> str | None:
        if category is not None and not self.category_names:
            msg = (
                f"Category {category!r} given, but {self.path.parent / METADATA_FILE} (the category names and "
                "thresholds written at export) is missing. Export the model with anomalib-multiclass and keep that "
                "file next to it."
            )
            raise FileNotFoundError(msg)
        if category is not None and category not in self.category_names:
            msg = f"Category {category!r} was not seen in training. The model knows {self.category_names}."
            raise ValueError(msg)
        return category

    def predict(self, image: Any, category: str | None = None) -> NumpyImageBatch:
        """Run the model; keep ``pred_class`` (and its name); with a category, that category's normalisation.

        ``image``: a path (any bit depth and mode, read with its full range), a PIL image, or an array or tensor
        (``H x W`` grayscale, ``H x W x 3``, ``N x H x W x 3`` or ``N x 3 x H x W``; integers scaled by their type's
        range, floats taken as [0, 1]). ``category``: the images' category for this call (default: the inferencer's).
        """
        category = self._checked_category(category) or self.category
        image = _as_model_input(image)
        image = self.pre_process(image)
        outputs = self.post_process(self.model({self.input_blob.any_name: image}))
        pred_class = outputs.pop("pred_class", None)
        raw = {name: outputs.pop(name) for name in RAW_OUTPUTS if name in outputs}
        if category is not None:
            if "raw_pred_score" not in raw:
                msg = (
                    f"{self.path} has no raw outputs ({', '.join(RAW_OUTPUTS)}): it was exported by an older "
                    "anomalib-multiclass, whose per-category scores were approximate. Export the model again."
                )
                raise ValueError(msg)
            outputs.update(self._category_outputs(raw, self.category_names.index(category)))
        batch = NumpyImageBatch(image=image, **outputs)
        batch.pred_class = pred_class
        if category is not None:
            batch.category = [category] * len(np.asarray(outputs["pred_score"]).reshape(-1))
        elif pred_class is not None and self.category_names:
            batch.category = [self.category_names[int(i)] for i in np.asarray(pred_class).reshape(-1)]
        return batch

    def _category_outputs(self, raw: dict[str, np.ndarray], class_index: int) -> dict[str, np.ndarray]:
        """Scores, labels, maps and masks of one category from the graph's raw outputs."""
        if self._post_processor is None:
            self._post_processor = post_processor_from_metadata(self.metadata)
        return per_category_outputs(self._post_processor, raw, class_index)


def _as_model_input(image: Any) -> np.ndarray:
    """Any image the inferencers take as a float32 array in [0, 1] (anomalib's ``pre_process`` does the layout)."""
    from PIL.Image import Image as PILImage

    if isinstance(image, (str, Path)):
        return read_rgb(image, as_tensor=False)
    if isinstance(image, PILImage):
        return to_rgb_array(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return as_rgb_array(image)


def post_processor_from_metadata(metadata: dict[str, Any]) -> ClassAwarePostProcessor:
    """The exported model's class-aware post-processor, rebuilt from ``multiclass_metadata.json``."""
    return ClassAwarePostProcessor.from_table(
        metadata.get("thresholds", {}), metadata.get("category_names") or [], metadata.get("post_processor")
    )


def per_category_outputs(
    post_processor: ClassAwarePostProcessor, raw: dict[str, np.ndarray], class_index: int | np.ndarray
) -> dict[str, np.ndarray]:
    """``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask`` from an exported graph's raw outputs.

    ``raw``: the graph's ``raw_pred_score`` (and ``raw_anomaly_map``); ``class_index``: the images' category, one for
    all or one per image. The post-processor's own maths, applied once on raw values: exactly what PyTorch gives.
    """
    score = torch.as_tensor(np.asarray(raw["raw_pred_score"], dtype=np.float32))
    raw_map = raw.get("raw_anomaly_map")
    anomaly_map = None if raw_map is None else torch.as_tensor(np.asarray(raw_map, dtype=np.float32))
    classes = torch.as_tensor(np.asarray(class_index)).reshape(-1)
    applied = post_processor.apply(score.reshape(-1), anomaly_map, classes if classes.numel() > 1 else int(classes))
    shapes = {"pred_score": score.shape, "pred_label": score.shape}
    return {
        key: value.numpy().reshape(shapes.get(key, value.shape)) for key, value in applied.items() if value is not None
    }


class MultiClassTorchInferencer(TorchInferencer):
    """anomalib's ``TorchInferencer`` that keeps ``pred_class`` (MINT-AD) in a :class:`MultiClassImageBatch`.

    The stock one builds an ``ImageBatch`` from every output and works for the models without a classifier.
    """

    def predict(self, image: Any) -> MultiClassImageBatch:
        """Run the exported torch model on one image (path, array or tensor)."""
        if not isinstance(image, torch.Tensor) or image.dtype != torch.float32:
            array = _as_model_input(image)
            image = torch.from_numpy(np.ascontiguousarray(array))
            if image.shape[-1] == 3:  # channels last: to N x 3 x H x W
                image = image.movedim(-1, -3)
        image = self.pre_process(image)
        predictions = self.model(image)
        return MultiClassImageBatch(image=image, **predictions._asdict())
