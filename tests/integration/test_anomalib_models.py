"""anomalib's own models on our multi-category datamodules: the per-category table, and the separate mode."""

import json

import pytest
from anomalib.metrics import AUROC, Evaluator

PADIM = ["--model", "Padim", "--model.backbone", "resnet18", "--model.pre_trained", "false"]
PADIM += ["--model.layers", "[layer1,layer2]", "--model.n_features", "20"]


def _data(root) -> list[str]:
    return ["--data", "MultiClassFolder", "--data.root", str(root), "--data.num_workers", "0"]


def _common(tmp_path) -> list[str]:
    return ["--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--default_root_dir", str(tmp_path)]


def test_padim_on_a_multi_category_datamodule_reports_the_per_category_table(synthetic_root, tmp_path):
    from anomalib.cli import AnomalibCLI

    from anomalib_multiclass.evaluation import PerCategoryEvaluator

    cli = AnomalibCLI(["train", *PADIM, *_data(synthetic_root), *_common(tmp_path)])
    assert isinstance(cli.model.evaluator, PerCategoryEvaluator)
    (csv_path,) = tmp_path.rglob("per_category_metrics.csv")
    rows = [line.split(",")[0] for line in csv_path.read_text().splitlines()]
    assert rows == ["category", "brick", "coffee", "grass", "mean", "pooled"]
    assert (csv_path.parent / "report.html").is_file()
    for category in ("brick", "coffee", "grass"):  # anomalib's visualizer, one folder per category on our data
        assert (csv_path.parent / "images" / category / "test" / "good").is_dir()


@pytest.mark.slow
def test_an_explicit_evaluator_is_respected(synthetic_root, tmp_path):
    from anomalib.engine import Engine
    from anomalib.models import Padim

    from anomalib_multiclass.data import MultiClassFolder

    evaluator = Evaluator(test_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_")])
    model = Padim(backbone="resnet18", pre_trained=False, layers=["layer1"], n_features=10, evaluator=evaluator)
    engine = Engine(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, logger=False)
    datamodule = MultiClassFolder(root=synthetic_root, num_workers=0)
    engine.fit(model, datamodule=datamodule)
    engine.test(model, datamodule=datamodule)
    assert model.evaluator is evaluator
    assert not list(tmp_path.rglob("per_category_metrics.csv"))


def test_a_plain_anomalib_datamodule_keeps_anomalib_s_evaluator(synthetic_root, tmp_path):
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Padim

    model = Padim(backbone="resnet18", pre_trained=False, layers=["layer1"], n_features=10)
    engine = Engine(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, logger=False)
    engine.fit(model, datamodule=MVTecAD(root=synthetic_root, category="brick", num_workers=0))
    assert type(model.evaluator) is Evaluator


@pytest.mark.slow
def test_separate_mode_writes_one_row_per_category(synthetic_root, tmp_path):
    from anomalib_multiclass.separate import main

    assert main(["separate", *PADIM, *_data(synthetic_root), *_common(tmp_path)]) == 0
    (json_path,) = (tmp_path / "Padim" / "MultiClassFolder" / "separate").glob("per_category_metrics.json")
    table = json.loads(json_path.read_text())
    assert list(table) == ["brick", "coffee", "grass", "mean", "pooled"]
    per_category_runs = sorted(
        p.relative_to(tmp_path).parts[2]
        for p in tmp_path.rglob("per_category_metrics.json")
        if p.parent.name != "separate"
    )
    assert per_category_runs == ["brick", "coffee", "grass"]  # one model, one run per category
    separate = json_path.parent
    assert (separate / "report.html").is_file()
    runs = json.loads((separate / "category_runs.json").read_text())
    assert list(runs) == ["brick", "coffee", "grass"]
    for category, folder in runs.items():
        assert (separate / folder / "images" / category).is_dir()
