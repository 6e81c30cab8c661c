"""Every anomalib behaviour the package relies on (listed in ``anomalib_multiclass/_registration.py``), pinned.

A new anomalib release that renames, removes or changes one of them fails here, by name, before a user meets it
as a silent no-op or a crash deep inside a run. The numbers in the test names are the list's.
"""

import importlib
import inspect
import warnings

import anomalib
import pytest
from anomalib.engine import Engine
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule
from lightning.pytorch import Callback
from torch import nn

from anomalib_multiclass import _registration
from anomalib_multiclass.evaluation.default import is_default_evaluator
from anomalib_multiclass.models import UniAD
from tests.conftest import TINY_UNIAD


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture(scope="module")
def tiny_model():
    return UniAD(**TINY_UNIAD)


def test_the_installed_anomalib_is_the_supported_release():
    assert _registration.is_supported_anomalib(anomalib.__version__), anomalib.__version__


def test_an_unknown_anomalib_version_is_named_in_a_warning(monkeypatch):
    monkeypatch.setattr(anomalib, "__version__", "2.8.0")
    monkeypatch.setattr(_registration, "_VERSION_CHECKED", [])
    with pytest.warns(UserWarning, match=r"supports anomalib 2\.7\.\*.*anomalib 2\.8\.0 is installed"):
        assert not _registration.check_anomalib_version()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _registration.check_anomalib_version()  # once per process


def test_a_patch_that_no_longer_fits_is_a_warning_not_a_crash():
    def broken(_module):
        raise AttributeError("AnomalibModule has no attribute configure_callbacks")

    with pytest.warns(UserWarning, match=r"could not adapt anomalib .*\(the test's patch; supported: anomalib 2\.7"):
        _registration._apply("the test's patch", broken, None)


def test_1_the_hooked_modules_exist_under_their_names():
    for name in ("anomalib.models", "anomalib.data", "anomalib.cli.cli"):
        assert importlib.import_module(name).__name__ == name


def test_2_short_names_are_module_attributes_and_models_direct_subclasses():
    import anomalib.data
    import anomalib.models

    assert "getattr(" in inspect.getsource(anomalib.models.get_model)
    assert "anomalib.data" in inspect.getsource(anomalib.data.get_datamodule)
    assert "__subclasses__()" in inspect.getsource(anomalib.models.list_models)
    assert UniAD in AnomalibModule.__subclasses__()
    assert anomalib.models.UniAD is UniAD  # published by the hook
    assert "uni_a_d" in anomalib.models.list_models()


def test_3_the_class_path_allow_list_is_a_set_that_get_model_reads():
    import anomalib.models

    assert isinstance(anomalib.models.ALLOWED_MODULES, set)
    assert "anomalib_multiclass.models" in anomalib.models.ALLOWED_MODULES
    assert "ALLOWED_MODULES" in inspect.getsource(anomalib.models.get_model)


def test_4_resolve_component_is_a_static_method_with_the_expected_behaviour(tiny_model):
    assert isinstance(inspect.getattr_static(AnomalibModule, "_resolve_component"), staticmethod)
    assert _parameters(AnomalibModule._resolve_component) == ["component", "component_type", "default_callable"]
    evaluator = Evaluator()
    assert AnomalibModule._resolve_component(evaluator, Evaluator, Evaluator) is evaluator
    assert AnomalibModule._resolve_component(False, Evaluator, Evaluator) is None
    assert isinstance(AnomalibModule._resolve_component(True, Evaluator, Evaluator), Evaluator)
    # AnomalibModule.__init__ resolves the evaluator through it: the default one is marked
    assert is_default_evaluator(tiny_model.evaluator)
    assert not is_default_evaluator(UniAD(**TINY_UNIAD, evaluator=Evaluator()).evaluator)


def test_5_configure_callbacks_returns_the_components_that_are_callbacks(tiny_model):
    assert _parameters(AnomalibModule.configure_callbacks) == ["self"]
    callbacks = list(AnomalibModule.configure_callbacks(tiny_model))
    components = (tiny_model.pre_processor, tiny_model.post_processor, tiny_model.evaluator, tiny_model.visualizer)
    assert callbacks == [c for c in components if isinstance(c, Callback)]
    assert tiny_model.evaluator in callbacks


def test_6_anomalib_post_processor_is_a_callback_with_post_process_batch():
    from anomalib.post_processing import PostProcessor

    assert issubclass(PostProcessor, Callback)
    assert callable(getattr(PostProcessor, "post_process_batch", None))


def test_7_the_cli_hooks_exist():
    from anomalib.cli.cli import AnomalibCLI

    assert _parameters(AnomalibCLI.before_instantiate_classes) == ["self"]
    assert _parameters(AnomalibCLI._run_subcommand) == ["self"]
    assert "seed_everything" in inspect.getsource(AnomalibCLI)


def test_8_setup_workspace_and_predict_dataset():
    import anomalib.engine.engine as engine_module
    from anomalib.data import PredictDataset

    from anomalib_multiclass.cli import _PATCHED

    workspace = getattr(Engine._setup_workspace, "__wrapped__", Engine._setup_workspace)
    parameters = inspect.signature(workspace).parameters
    assert "versioned_dir" in parameters
    assert parameters["versioned_dir"].default is False or getattr(workspace, _PATCHED, False)
    assert "default_root_dir" in Engine()._cache.args
    assert issubclass(engine_module.PredictDataset, PredictDataset)  # ours replaces it by a subclass
    assert "PredictDataset(" in inspect.getsource(Engine.predict)


def test_9_the_engine_copies_the_model_trainer_arguments_over_its_own(tiny_model):
    from anomalib.engine.engine import _TrainerArgumentsCache

    cache = _TrainerArgumentsCache(gradient_clip_val=1.0, num_sanity_val_steps=2)
    cache.update(tiny_model)
    assert cache.args["gradient_clip_val"] == tiny_model.gradient_clip_val
    assert cache.args["num_sanity_val_steps"] == 0


def test_10_constructor_arguments_are_saved_as_hyper_parameters(tiny_model):
    assert "save_hyperparameters" in inspect.getsource(AnomalibModule.__init__)
    assert tiny_model.hparams["hidden_dim"] == TINY_UNIAD["hidden_dim"]
    assert "evaluator" not in tiny_model.hparams


def test_11_export_methods_and_the_compression_hook():
    from anomalib.models.components.base.export_mixin.mixin import ExportMixin

    assert _parameters(ExportMixin.to_torch)[:3] == ["self", "export_root", "model_file_name"]
    onnx = inspect.signature(ExportMixin.to_onnx).parameters
    assert list(onnx)[:4] == ["self", "export_root", "model_file_name", "input_size"]
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in onnx.values())
    assert "torch.onnx.export" in inspect.getsource(ExportMixin.to_onnx)
    openvino = _parameters(ExportMixin.to_openvino)
    for name in ("export_root", "model_file_name", "compression_type", "datamodule", "metric", "task", "max_drop"):
        assert name in openvino
    compress = ["self", "model", "compression_type", "datamodule", "metric", "task", "max_drop"]
    assert _parameters(ExportMixin._compress_ov_model) == compress
    assert "self._compress_ov_model(" in inspect.getsource(ExportMixin.to_openvino)
    assert _parameters(UniAD._compress_ov_model) == compress  # ours is called the same way


def test_12_the_building_blocks_imported_from_anomalib():
    from anomalib.models.components import GaussianBlur2d
    from anomalib.models.components.backbone import get_decoder
    from anomalib.models.components.backbone.resnet_decoder import DecoderBasicBlock
    from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

    assert {"sigma", "channels", "kernel_size"} <= set(_parameters(GaussianBlur2d))
    assert _parameters(get_decoder) == ["name"]
    assert _parameters(get_bottleneck_layer)[0] == "backbone"
    assert issubclass(DecoderBasicBlock, nn.Module)
    forward = [name for name in _parameters(ReverseDistillationLoss.forward) if name != "self"]
    assert forward[:2] == ["encoder_features", "decoder_features"]
