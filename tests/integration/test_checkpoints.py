"""Trained weights meet data: the category map is checked on every path that brings in a checkpoint (issue 16)."""

import pytest
import torch
from anomalib.engine import Engine

from anomalib_multiclass.data import MultiClassFolder
from anomalib_multiclass.models import UniAD
from anomalib_multiclass.models.components.base import CategoryMismatchError
from tests.conftest import TINY_UNIAD


def _engine(root):
    return Engine(accelerator="cpu", max_epochs=1, default_root_dir=root, logger=False, enable_progress_bar=False)


def _data(root, **kwargs):
    return MultiClassFolder(root=root, num_workers=0, train_batch_size=6, eval_batch_size=8, **kwargs)


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("trained")
    _engine(root).fit(UniAD(**TINY_UNIAD), datamodule=_data(synthetic_root))
    return next(root.rglob("*.ckpt"))


def test_checkpoint_tested_on_another_category_order_is_refused(checkpoint, synthetic_root, tmp_path):
    # issue 16, case 1: setup() took the datamodule's order, then the checkpoint overwrote the names unchecked
    data = _data(synthetic_root, categories=["grass", "brick", "coffee"])
    with pytest.raises(CategoryMismatchError, match=r"category_names=\['brick', 'coffee', 'grass'\]"):
        _engine(tmp_path).test(UniAD(**TINY_UNIAD), datamodule=data, ckpt_path=checkpoint)


def test_subset_of_trained_categories_needs_the_trained_indices(checkpoint, synthetic_root, tmp_path):
    with pytest.raises(CategoryMismatchError, match="category_names"):
        _engine(tmp_path).test(
            UniAD(**TINY_UNIAD), datamodule=_data(synthetic_root, categories=["grass"]), ckpt_path=checkpoint
        )
    kept = _data(synthetic_root, categories=["grass"], category_names=["brick", "coffee", "grass"])
    results = _engine(tmp_path).test(UniAD(**TINY_UNIAD), datamodule=kept, ckpt_path=checkpoint)
    assert "image_AUROC" in str(results)


def test_bare_dataloader_with_another_order_is_refused(checkpoint, synthetic_root, tmp_path):
    # no datamodule to check at restore time: the batches' own (category, class_index) pairs are checked
    data = _data(synthetic_root, categories=["grass", "brick", "coffee"])
    data.setup()
    with pytest.raises(
        CategoryMismatchError, match=r"gives category '\w+' the class index \d; the model was trained with it as \d"
    ):
        _engine(tmp_path).predict(UniAD(**TINY_UNIAD), dataloaders=data.test_dataloader(), ckpt_path=checkpoint)


def test_load_from_checkpoint_then_test_is_refused(checkpoint, synthetic_root, tmp_path):
    model = UniAD.load_from_checkpoint(checkpoint)
    assert model.category_names == ["brick", "coffee", "grass"]
    with pytest.raises(CategoryMismatchError):
        _engine(tmp_path).test(model, datamodule=_data(synthetic_root, categories=["coffee", "brick", "grass"]))


def test_cli_test_with_another_category_order_is_refused(checkpoint, synthetic_root, tmp_path):
    # the command of the issue, in-process: anomalib test ... --data.categories "[grass, brick, coffee]" --ckpt_path
    from anomalib.cli import AnomalibCLI

    from tests.integration.test_cli import _model_args

    args = [
        "test",
        *_model_args(),
        "--data",
        "MultiClassFolder",
        "--data.root",
        str(synthetic_root),
        "--data.num_workers",
        "0",
        "--data.categories",
        "[grass, brick, coffee]",
        "--ckpt_path",
        str(checkpoint),
        "--default_root_dir",
        str(tmp_path),
    ]
    with pytest.raises(CategoryMismatchError, match=r"--data.category_names \"\[brick, coffee, grass\]\""):
        AnomalibCLI(args)
    # the fix the message gives works
    index = args.index("--ckpt_path")
    AnomalibCLI([*args[:index], "--data.category_names", "[brick, coffee, grass]", *args[index:]])


@pytest.mark.parametrize("subcommand", ["test", "predict", pytest.param("export", marks=pytest.mark.slow)])
def test_readme_ckpt_path_forms_take_the_model_arguments_from_the_checkpoint(
    subcommand, checkpoint, synthetic_root, tmp_path, caplog
):
    # issue 16, case 5: `anomalib test --model UniAD --ckpt_path CK` built UniAD with its default sizes and failed
    # on a checkpoint of any other size. (`pre_trained false`: this machine has no b4 weights to download; the
    # checkpoint holds the backbone anyway.)
    from anomalib.cli import AnomalibCLI

    model = ["--model", "UniAD", "--model.pre_trained", "false"]
    if subcommand == "test":
        data = ["--data", "MultiClassFolder", "--data.root", str(synthetic_root), "--data.num_workers", "0"]
    elif subcommand == "predict":
        data = ["--data", str(synthetic_root / "brick" / "test" / "good")]
    else:
        data = ["--export_type", "onnx", "--export_root", str(tmp_path), "--input_size", "[64,64]"]
    root = [] if subcommand == "export" else ["--default_root_dir", str(tmp_path)]
    AnomalibCLI([subcommand, *model, *data, "--ckpt_path", str(checkpoint), *root])
    if subcommand == "test":
        assert "with the checkpoint's arguments" in caplog.text  # built so before the datamodule reads its size
        assert "hidden_dim=32" in caplog.text
    produced = {"test": "per_category_metrics.csv", "predict": "*.png", "export": "model.onnx"}[subcommand]
    assert list(tmp_path.rglob(produced))


@pytest.mark.parametrize("name", ["UniAD", "MintAD", "RLR", "OmniAD", "LGC"])
def test_every_model_takes_its_network_from_the_checkpoint(name, tmp_path):
    # what `anomalib test --model <name> --ckpt_path` does: a default-built model receives a small checkpoint
    from lightning.pytorch import Trainer

    from tests.integration.test_export import MODELS

    cls, kwargs = MODELS[name]
    trained = cls(**kwargs, **({"classifier_classes": 3} if name == "MintAD" else {}))
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(trained)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)

    model = cls(pre_trained=False)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])  # strict: every tensor fits
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().model(images).anomaly_map, trained.eval().model(images).anomaly_map)


def _cli_test(checkpoint, synthetic_root, root, model: str = "UniAD"):
    """``anomalib test --model <model> --data ... --ckpt_path ...``: the README's command, without the config."""
    from anomalib.cli import AnomalibCLI

    data = ["--data", "MultiClassFolder", "--data.root", str(synthetic_root), "--data.num_workers", "0"]
    args = ["test", "--model", model, *data, "--ckpt_path", str(checkpoint), "--default_root_dir", str(root)]
    return AnomalibCLI(args)


def _table(path):
    import json

    return json.loads(path.read_text())


def test_checkpoint_without_config_runs_at_its_size_and_never_overwrites(checkpoint, synthetic_root, tmp_path):
    # issue 25, cases 3 and 4: the datamodule resized to the default 224 px (another table, no error), and
    # `anomalib test` replaced the last run's per_category_metrics and config.yaml (its folder is `latest`)
    earlier = tmp_path / "UniAD" / "MultiClassFolder" / "all" / "v0"
    earlier.mkdir(parents=True)
    for name in ("per_category_metrics.json", "config.yaml"):
        (earlier / name).write_text("the earlier run's")
    (earlier.parent / "latest").symlink_to(earlier, target_is_directory=True)

    cli = _cli_test(checkpoint, synthetic_root, tmp_path)
    assert tuple(cli.model.model_input_size) == (64, 64)
    augmentations = cli.datamodule.test_data.augmentations
    resizes = getattr(augmentations, "transforms", [augmentations])
    assert {tuple(t.size) for t in resizes if hasattr(t, "size")} == {(64, 64)}  # the datamodule's resize too
    assert (earlier / "per_category_metrics.json").read_text() == "the earlier run's"
    assert (earlier / "config.yaml").read_text() == "the earlier run's"
    assert (earlier.parent / "v1" / "per_category_metrics.json").exists()


@pytest.mark.slow
def test_checkpoint_without_config_gives_the_training_table(checkpoint, synthetic_root, tmp_path):
    reference_root = tmp_path / "python"
    _engine(reference_root).test(UniAD(**TINY_UNIAD), datamodule=_data(synthetic_root), ckpt_path=checkpoint)
    (expected,) = reference_root.rglob("per_category_metrics.json")
    _cli_test(checkpoint, synthetic_root, tmp_path / "cli")
    (got,) = (tmp_path / "cli").rglob("per_category_metrics.json")
    assert _table(got) == _table(expected)


def test_a_checkpoint_of_another_model_is_refused_by_name(checkpoint, synthetic_root, tmp_path):
    # issue 25, case 5: a UniAD checkpoint tested as MintAD gave a state_dict key dump
    from anomalib_multiclass.models.components.base import CheckpointModelError

    with pytest.raises(CheckpointModelError, match=r"holds a UniAD model, not a MintAD.*--model UniAD"):
        _cli_test(checkpoint, synthetic_root, tmp_path, model="MintAD")


def test_exporting_twice_into_one_root_is_refused(tmp_path):
    # issue 25, case 4: a second export replaced weights/openvino/ without a word
    model = UniAD(**TINY_UNIAD)
    model.to_torch(tmp_path)
    with pytest.raises(FileExistsError, match=r"model\.pt already exists.*--export_root"):
        model.to_torch(tmp_path)
    (tmp_path / "weights" / "openvino").mkdir(parents=True)
    (tmp_path / "weights" / "openvino" / "model.xml").write_text("<net/>")
    for export in (model.to_openvino, model.to_onnx):
        folder = tmp_path / "weights" / ("openvino" if export == model.to_openvino else "onnx")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_text("")
        with pytest.raises(FileExistsError, match="another folder"):
            export(tmp_path, input_size=(64, 64))


def test_a_failed_run_leaves_no_empty_version_folder(synthetic_root, tmp_path):
    # issue 25, case 6: a corrupt test image was found after a training epoch, and the run left a v0 with only
    # config.yaml; now every split's files are opened at setup, and the empty folder is removed
    import shutil

    from anomalib.cli import AnomalibCLI

    from anomalib_multiclass.data import CorruptImageError
    from tests.integration.test_cli import _model_args

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    bad = sorted((data / "grass" / "test").rglob("*.png"))[-1]
    bad.write_bytes(b"")
    root = tmp_path / "results"
    args = ["train", *_model_args(), "--data", "MultiClassFolder", "--data.root", str(data)]
    args += ["--data.num_workers", "0", "--trainer.max_epochs", "1", "--default_root_dir", str(root)]
    with pytest.raises(CorruptImageError, match=bad.name):
        AnomalibCLI(args)
    assert not [path for path in root.rglob("v*") if path.is_dir()]
