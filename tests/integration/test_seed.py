"""`seed_everything` in a config really seeds the plain `anomalib` command: one config, twice, one table."""

import json

import pytest
import torch

from tests.conftest import TINY_UNIAD


def _train(config_path, root, cache: bool) -> dict:
    from anomalib.cli import AnomalibCLI

    args = ["train", "--config", str(config_path), "--model.cache_features", str(cache).lower()]
    args += ["--model.visualizer", "false", "--default_root_dir", str(root)]
    AnomalibCLI(args)
    (path,) = root.rglob("per_category_metrics.json")
    return json.loads(path.read_text())


@pytest.fixture
def config_path(synthetic_root, tmp_path):
    import yaml

    model = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_UNIAD.items()}
    config = {
        "seed_everything": 7,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "model": {"class_path": "anomalib_multiclass.models.UniAD", "init_args": {**model, "lr": 1e-3}},
        "data": {
            "class_path": "anomalib_multiclass.data.MultiClassFolder",
            "init_args": {"root": str(synthetic_root), "train_batch_size": 4, "eval_batch_size": 8, "num_workers": 0},
        },
    }
    path = tmp_path / "tiny_uniad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_cli_seeds_before_building_the_model(config_path):
    from anomalib.cli import AnomalibCLI

    torch.manual_seed(123)
    cli = AnomalibCLI(["fit", "--config", str(config_path)], run=False)
    assert torch.initial_seed() == 7
    assert cli.config["fit"]["seed_everything"] == 7
    weights = [p.detach().clone() for p in cli.model.model.reconstruction.parameters()]
    again = AnomalibCLI(["fit", "--config", str(config_path)], run=False)
    assert all(torch.equal(a, b) for a, b in zip(weights, again.model.model.reconstruction.parameters(), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_one_config_twice_gives_one_table(config_path, tmp_path, cache):
    first = _train(config_path, tmp_path / "first", cache)
    second = _train(config_path, tmp_path / "second", cache)
    assert first == second
    assert first["mean"]["image_AUROC"] is not None
