import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalib_multiclass.evaluation import PerCategoryEvaluator, format_table


def _batch(scores, labels, categories, maps=None, masks=None):
    return SimpleNamespace(
        pred_score=torch.tensor(scores, dtype=torch.float32),
        gt_label=torch.tensor(labels),
        anomaly_map=maps,
        gt_mask=masks,
        category=categories,
    )


def test_per_category_mean_and_pooled_match_a_hand_computation():
    rng = np.random.default_rng(0)
    categories = ["a"] * 8 + ["b"] * 8
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 2)
    scores = rng.random(16) + labels * np.r_[np.full(8, 0.5), np.full(8, 0.2)] + np.r_[np.zeros(8), np.full(8, 3.0)]
    maps = torch.rand(16, 1, 8, 8)
    masks = torch.zeros(16, 8, 8, dtype=torch.bool)
    masks[labels == 1, 2:5, 2:5] = True
    maps[masks.unsqueeze(1)] += 0.3
    evaluator = PerCategoryEvaluator(metrics=["image_AUROC", "image_AP", "pixel_AUROC"])
    evaluator.reset()
    for start in (0, 5, 11):  # batches that cut across categories
        stop = {0: 5, 5: 11, 11: 16}[start]
        evaluator.update(
            _batch(scores[start:stop], labels[start:stop], categories[start:stop], maps[start:stop], masks[start:stop])
        )
    results = evaluator.compute()

    expected = {}
    for cat, sl in (("a", slice(0, 8)), ("b", slice(8, 16))):
        expected[cat] = {
            "image_AUROC": roc_auc_score(labels[sl], scores[sl]),
            "image_AP": average_precision_score(labels[sl], scores[sl]),
            "pixel_AUROC": roc_auc_score(masks[sl].flatten().numpy(), maps[sl].flatten().numpy()),
        }
        for name, value in expected[cat].items():
            assert results[cat][name] == pytest.approx(value, abs=1e-5), (cat, name)
    for name in ("image_AUROC", "image_AP", "pixel_AUROC"):
        assert results["mean"][name] == pytest.approx((expected["a"][name] + expected["b"][name]) / 2, abs=1e-5)
    assert results["pooled"]["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-5)
    # category b's scores sit 3 above a's: pooling mixes scales, so pooled < mean here
    assert results["pooled"]["image_AUROC"] < results["mean"]["image_AUROC"]
    table = format_table(results, ["image_AUROC", "image_AP", "pixel_AUROC"])
    assert table.splitlines()[0].split()[:2] == ["category", "image_AUROC"]
    assert [line.split()[0] for line in table.splitlines()[2:] if not line.startswith("-")] == [
        "a",
        "b",
        "mean",
        "pooled",
    ]


def test_writes_csv_and_json(tmp_path):
    evaluator = PerCategoryEvaluator(metrics=["image_AUROC"])
    evaluator.reset()
    evaluator.update(_batch([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1], ["x", "x", "y", "y"]))
    evaluator.compute()
    csv_path, json_path = evaluator.write(tmp_path)
    assert csv_path.read_text().splitlines() == ["category,image_AUROC", "x,1.0", "y,1.0", "mean,1.0", "pooled,1.0"]
    assert '"mean"' in json_path.read_text()


def test_plain_anomalib_batch_without_category_is_one_category():
    evaluator = PerCategoryEvaluator(metrics=["image_AUROC"])
    evaluator.reset()
    batch = SimpleNamespace(
        pred_score=torch.tensor([0.1, 0.9]), gt_label=torch.tensor([0, 1]), anomaly_map=None, gt_mask=None
    )
    evaluator.update(batch)
    results = evaluator.compute()
    assert list(results) == ["all", "mean", "pooled"]


def test_undefined_metric_is_nan_not_a_crash():
    evaluator = PerCategoryEvaluator(metrics=["image_AUROC"])
    evaluator.reset()
    evaluator.update(_batch([0.1, 0.2, 0.3, 0.9], [0, 0, 0, 1], ["only_normal", "only_normal", "z", "z"]))
    results = evaluator.compute()
    assert results["z"]["image_AUROC"] == 1.0
    assert math.isnan(results["only_normal"]["image_AUROC"]) or results["only_normal"]["image_AUROC"] in (0.0, 0.5)


def test_unknown_metric_name_is_refused():
    with pytest.raises(ValueError, match="Available"):
        PerCategoryEvaluator(metrics=["image_accuracy"])


def test_mixed_datasets_get_a_mean_per_dataset():
    evaluator = PerCategoryEvaluator(metrics=["image_AUROC"])
    evaluator.reset()
    # mvtec/a perfect, mvtec/b inverted, visa/c perfect: dataset means 0.5 and 1.0, overall mean 2/3
    scores = [0.1, 0.9, 0.9, 0.1, 0.2, 0.8]
    labels = [0, 1, 0, 1, 0, 1]
    evaluator.update(_batch(scores, labels, ["mvtec/a", "mvtec/a", "mvtec/b", "mvtec/b", "visa/c", "visa/c"]))
    results = evaluator.compute()
    assert list(results) == ["mvtec/a", "mvtec/b", "visa/c", "mean[mvtec]", "mean[visa]", "mean", "pooled"]
    assert results["mean[mvtec]"]["image_AUROC"] == pytest.approx(0.5)
    assert results["mean[visa]"]["image_AUROC"] == pytest.approx(1.0)
    assert results["mean"]["image_AUROC"] == pytest.approx(2 / 3)  # over categories, not over dataset means
    table = format_table(results, ["image_AUROC"])
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[2:] if not line.startswith("-")] == list(results)
    assert lines[5].startswith("-")  # the separator sits between the categories and the summary rows
