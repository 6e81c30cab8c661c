"""Export of a multi-class model: anomalib's ``to_onnx``/``to_openvino``/``to_torch`` plus what travels with them.

Each export writes ``multiclass_metadata.json`` beside the model (category names, per-category thresholds, the
post-processor's settings), refuses to replace an earlier export, ends the graph with the raw scores where the
package's inferencer needs them, and calibrates INT8 on images of every category.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomalib_multiclass.category_map import write_metadata
from anomalib_multiclass.models.components.checks import raw_export_outputs, refuse_existing_export

if TYPE_CHECKING:
    from pathlib import Path

if TYPE_CHECKING:  # the mixins are read as what they extend: an AnomalibModule (super() calls checked)
    from anomalib.models.components import AnomalibModule as ModuleBase
else:
    ModuleBase = object

ONNX_OPSET_VERSION = 18


class MultiClassExportMixin(ModuleBase):
    """Exports that carry the category map and thresholds, never overwrite, and quantize per category."""

    category_names: list[str] | None
    # the part of the frozen encoder an INT8 export (INT8_PTQ / INT8_ACQ) keeps in floating point: "stem" (its first
    # two convolutions, on and next to the image: the layers whose INT8 costs accuracy, measured in the README's
    # "INT8 that pays"), "all" (slower) or "none" (the stem INT8 too: a category can lose 2 points of image AUROC)
    int8_float_encoder: str = "stem"
    # how many convolutions that stem has (None: the package's, deploy.quantize.STEM_CONVOLUTIONS)
    int8_stem_convolutions: int | None = None
    # CPU precision of the layers an INT8 export leaves in floating point, written into the export as its runtime
    # option INFERENCE_PRECISION_HINT (None: the plugin's default, bf16 on a CPU with AVX-512 BF16). OpenVINO's
    # compile_model does not apply it by itself (measured, OpenVINO 2026.4); MultiClassOpenVINOInferencer does.
    int8_float_precision: str | None = None

    def export_metadata(self) -> dict[str, Any]:
        """What travels with an exported model: category names and per-category thresholds."""
        post_processor = getattr(self, "post_processor", None)
        table = getattr(post_processor, "per_class_thresholds", None)
        config = getattr(post_processor, "checkpoint_config", None)
        return {
            "category_names": self.category_names,
            "thresholds": table(self.category_names) if table is not None else {},
            "post_processor": config() if config is not None else {},
        }

    def _write_export_metadata(self, model_path: Path, **extra: Any) -> Path:
        return write_metadata(model_path, {**self.export_metadata(), **extra})

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Anomalib's ONNX export at opset 18, plus ``multiclass_metadata.json`` next to the model.

        anomalib asks for opset 14, below what torch's exporter writes (18): the exporter then tries a
        down-conversion that fails on ``Pad``, prints a traceback and keeps opset 18 anyway. Asking for 18
        gives the same model without the noise; ``opset_version=...`` still overrides it.
        """
        kwargs.setdefault("opset_version", ONNX_OPSET_VERSION)
        refuse_existing_export(args[0] if args else kwargs.get("export_root"), "onnx", (".onnx",), args, kwargs)
        with raw_export_outputs(getattr(self, "post_processor", None)):
            path = super().to_onnx(*args, **kwargs)
        self._write_export_metadata(path)
        return path

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:
        """Anomalib's OpenVINO export that anomalib's own ``OpenVINOInferencer`` runs, plus the metadata file.

        anomalib's inferencer makes a ``NumpyImageBatch`` of every model output and fails on a field it does not
        know, so outputs beyond anomalib's (MINT-AD's ``pred_class``, the raw ``raw_pred_score``/``raw_anomaly_map``)
        stay in the graph as named tensors but not as outputs; the metadata lists them (``hidden_outputs``) and
        ``MultiClassOpenVINOInferencer`` reads them.
        """
        import openvino as ov

        from anomalib_multiclass.deploy.graph import save_in_place, simplify
        from anomalib_multiclass.deploy.inferencer import hide_extra_outputs

        root = args[0] if args else kwargs.get("export_root")
        refuse_existing_export(root, "openvino", (".xml", ".bin"), args, kwargs)
        path = super().to_openvino(*args, **kwargs)
        # one read and at most one save: the graph rewrites (an INT8 export had them before calibration) and the
        # hidden outputs
        core = ov.Core()
        core.set_property({"ENABLE_MMAP": False})  # the file is replaced below: no mapping may hold it (Windows)
        model = core.read_model(path)
        outputs = len(model.get_results())
        rewritten = simplify(model)
        hidden = hide_extra_outputs(model)
        if rewritten or len(model.get_results()) != outputs:
            save_in_place(model, path)
        self._write_export_metadata(path, hidden_outputs=hidden)
        return path

    def to_torch(self, *args: Any, **kwargs: Any) -> Path:
        """The torch export of anomalib, refused where it would replace an earlier export."""
        refuse_existing_export(args[0] if args else kwargs.get("export_root"), "torch", (".pt",), args, kwargs)
        return super().to_torch(*args, **kwargs)

    def _compress_ov_model(
        self,
        model: Any,
        compression_type: Any = None,
        datamodule: Any = None,
        metric: Any = None,
        task: Any = None,
        max_drop: float = 0.01,
    ) -> Any:
        """INT8 compression calibrated on images of every category (``anomalib_multiclass.deploy.quantize``).

        The frozen encoder's stem stays in floating point (``int8_float_encoder``: "stem", "all" or "none";
        ``int8_stem_convolutions``). The graph rewrites of ``deploy/graph.py`` (dead softmax NaN guards, sines) come
        first: NNCF places its quantizers on their graph.
        """
        del task
        from anomalib_multiclass.deploy.compress import compress_openvino_model
        from anomalib_multiclass.deploy.graph import simplify

        simplify(model)

        stem = {} if self.int8_stem_convolutions is None else {"stem_convolutions": self.int8_stem_convolutions}
        compressed = compress_openvino_model(
            model,
            compression_type,
            datamodule,
            metric=metric,
            max_drop=max_drop,
            frozen_parameters=[name for name, p in self.named_parameters() if not p.requires_grad],
            float_encoder=self.int8_float_encoder,
            **stem,
        )
        if self.int8_float_precision is not None and str(compression_type).lower().endswith(("int8_ptq", "int8_acq")):
            compressed.set_rt_info(self.int8_float_precision, ["runtime_options", "INFERENCE_PRECISION_HINT"])
        return compressed
