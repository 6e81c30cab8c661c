"""anomalib's ``OpenVINOInferencer`` for multi-class models.

Export writes ``multiclass_metadata.json`` next to the model file: the ordered category names the model was
trained on and the per-category thresholds/normalisation of the class-aware post-processor. anomalib's
inferencer builds its result from the model outputs by name and refuses names it does not know, so the exported
IR has anomalib's outputs only and keeps MINT-AD's ``pred_class`` as a named tensor inside the graph (listed in
the metadata as ``hidden_outputs``). This subclass makes it an output again, returns it with its category name
and, for a model without a classifier, applies a given category's threshold.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import torch
from anomalib.data import InferenceBatch, NumpyImageBatch
from anomalib.deploy import OpenVINOInferencer, TorchInferencer

from anomalib_multiclass.category_map import METADATA_FILE, read_metadata
from anomalib_multiclass.data.dataclasses import MultiClassImageBatch
from anomalib_multiclass.post_processing import ClassAwarePostProcessor

logger = logging.getLogger(__name__)


def hide_extra_outputs(model_path: str | Path) -> list[str]:
    """Turn the outputs of an OpenVINO IR that anomalib's ``InferenceBatch`` lacks into internal named tensors.

    anomalib's ``OpenVINOInferencer`` passes every output to ``NumpyImageBatch(...)`` by name, which refuses unknown
    fields (``pred_class``). An output the graph itself uses (MINT-AD's class selects the per-class threshold)
    keeps its node and tensor name, so ``model.add_outputs(name)`` brings it back; one that nothing uses is
    dropped with a log line. The IR is rewritten in place. Returns the hidden names.
    """
    import openvino as ov

    model_path = Path(model_path)
    model = ov.Core().read_model(model_path)
    extra = [r for r in model.get_results() if not set(r.output(0).get_names()) & set(InferenceBatch._fields)]
    if not extra:
        return []
    hidden: list[str] = []
    for result in extra:
        names = sorted(result.output(0).get_names())
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
    with TemporaryDirectory(dir=model_path.parent) as tmp:
        rewritten = Path(tmp) / model_path.name
        ov.save_model(model, rewritten, compress_to_fp16=False)
        del model
        for suffix in (".xml", ".bin"):
            os.replace(rewritten.with_suffix(suffix), model_path.with_suffix(suffix))
    return hidden


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
        if category is not None and not self.category_names:
            msg = (
                f"Category {category!r} given, but {Path(path).parent / METADATA_FILE} (the category names and "
                "thresholds written at export) is missing. Export the model with anomalib-multiclass and keep that "
                "file next to it."
            )
            raise FileNotFoundError(msg)
        if category is not None and category not in self.category_names:
            msg = f"Category {category!r} was not seen in training. The model knows {self.category_names}."
            raise ValueError(msg)
        self.category = category
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
        """Re-normalise and re-threshold the exported (globally post-processed) outputs for one category."""
        if self._post_processor is None:
            self._post_processor = post_processor_from_metadata(self.metadata)
        return per_category_outputs(self._post_processor, outputs, class_index)


def post_processor_from_metadata(metadata: dict[str, Any]) -> ClassAwarePostProcessor:
    """The exported model's class-aware post-processor, rebuilt from ``multiclass_metadata.json``."""
    return ClassAwarePostProcessor.from_table(
        metadata.get("thresholds", {}), metadata.get("category_names") or [], metadata.get("post_processor")
    )


def per_category_outputs(
    post_processor: ClassAwarePostProcessor, outputs: dict[str, np.ndarray], class_index: int
) -> dict[str, np.ndarray]:
    """Scores, maps, labels and masks of one category from a graph's globally normalised outputs.

    The post-processor's own maths: undo the global normalisation, then apply the category's range and threshold.
    """
    score = torch.as_tensor(np.asarray(outputs["pred_score"], dtype=np.float32)).reshape(-1)
    raw_score = post_processor.undo_global_normalization(score, "image")
    raw_map = None
    if outputs.get("anomaly_map") is not None:
        anomaly_map = torch.as_tensor(np.asarray(outputs["anomaly_map"], dtype=np.float32))
        raw_map = post_processor.undo_global_normalization(anomaly_map, "pixel")
    applied = post_processor.apply(raw_score, raw_map, class_index)
    return {key: value.numpy().reshape(np.shape(outputs[key]) if key in outputs else value.shape)
            for key, value in applied.items() if value is not None}  # fmt: skip


class MultiClassTorchInferencer(TorchInferencer):
    """anomalib's ``TorchInferencer`` that keeps ``pred_class`` (MINT-AD) in a :class:`MultiClassImageBatch`.

    The stock one builds an ``ImageBatch`` from every output and works for the models without a classifier.
    """

    def predict(self, image: Any) -> MultiClassImageBatch:
        """Run the exported torch model on one image (path, array or tensor)."""
        from anomalib.data.utils import read_image
        from PIL.Image import Image as PILImage
        from torchvision.transforms.v2.functional import to_dtype, to_image

        if isinstance(image, (str, Path)):
            image = read_image(image, as_tensor=True)
        elif isinstance(image, (np.ndarray, PILImage)):
            image = to_dtype(to_image(image), torch.float32, scale=True)
        image = self.pre_process(image)
        predictions = self.model(image)
        return MultiClassImageBatch(image=image, **predictions._asdict())
