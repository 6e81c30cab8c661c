import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalib_multiclass.evaluation import PerCategoryEvaluator, format_table
from anomalib_multiclass.evaluation.table import format_report
from anomalib_multiclass.post_processing import ClassAwarePostProcessor


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
        for name, value in expected[cat].items():  # pixel metrics are binned: within 1e-3 (test_statistics.py)
            assert results[cat][name] == pytest.approx(value, abs=1e-5 if name.startswith("image") else 1e-3)
    for name in ("image_AUROC", "image_AP", "pixel_AUROC"):
        assert results["mean"][name] == pytest.approx((expected["a"][name] + expected["b"][name]) / 2, abs=1e-3)
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
    assert csv_path.read_text().splitlines() == [
        "category,image_AUROC,note",
        "x,1.0,",
        "y,1.0,",
        "mean,1.0,",
        "pooled,1.0,",
    ]
    assert json.loads(json_path.read_text())["mean"] == {"image_AUROC": 1.0, "n_categories": {"image_AUROC": 2}}


def test_plain_anomalib_batch_without_category_is_one_category():
    evaluator = PerCategoryEvaluator(metrics=["image_AUROC"])
    evaluator.reset()
    batch = SimpleNamespace(
        pred_score=torch.tensor([0.1, 0.9]), gt_label=torch.tensor([0, 1]), anomaly_map=None, gt_mask=None
    )
    evaluator.update(batch)
    results = evaluator.compute()
    assert list(results) == ["all", "mean", "pooled"]


def test_a_category_without_defects_is_na_and_left_out_of_the_mean(tmp_path, caplog):
    evaluator = PerCategoryEvaluator(metrics=["image_AUROC", "image_AP", "image_F1Max"])
    evaluator.reset()
    scores = [0.1, 0.2, 0.3, 0.9, 0.2, 0.8, 0.5, 0.6]
    labels = [0, 0, 0, 1, 0, 1, 1, 1]
    categories = ["no_defect", "no_defect", "z", "z", "w", "w", "only_defect", "only_defect"]
    with caplog.at_level(logging.WARNING):
        evaluator.update(_batch(scores, labels, categories))
        results = evaluator.compute()
    for category in ("no_defect", "only_defect"):
        assert all(math.isnan(v) for v in results[category].values()), category
    assert results["mean"] == {"image_AUROC": 1.0, "image_AP": 1.0, "image_F1Max": 1.0}  # z and w only
    assert evaluator.counted["mean"]["image_AUROC"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no_defect" in w and "no defective test image" in w for w in warnings)
    assert any("only_defect" in w and "no normal test image" in w for w in warnings)
    report = format_report(results, evaluator.metric_names, evaluator.notes)
    no_defect_line = next(line for line in report.splitlines() if line.startswith("no_defect "))
    assert no_defect_line.split()[1:] == ["n/a", "n/a", "n/a"]
    assert "mean: image metrics over 2 of 4 categories" in report
    csv_path, json_path = evaluator.write(tmp_path)
    assert "no_defect,null,null,null,image metrics: no defective test image" in csv_path.read_text()
    assert json.loads(json_path.read_text())["no_defect"]["image_AUROC"] is None


def test_raw_scores_beyond_any_range_do_not_tie():
    # raw reconstruction errors of 20-120: torchmetrics would squash them with a sigmoid into exact 1.0 ties
    rng = np.random.default_rng(3)
    labels = np.array([0] * 10 + [1] * 10)
    scores = 20 + 100 * rng.random(20) + 15 * labels
    evaluator = PerCategoryEvaluator(metrics=["image_AUROC", "image_AP"])
    evaluator.reset()
    evaluator.update(_batch(scores.tolist(), labels.tolist(), ["a"] * 20))
    results = evaluator.compute()
    assert 0.5 < roc_auc_score(labels, scores) < 1
    assert results["a"]["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert results["a"]["image_AP"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)


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


def test_metrics_read_raw_scores_whatever_the_predicted_class():
    """The papers' protocol through the callbacks in Lightning's order: a classifier that is wrong half the time
    changes neither the statistics the post-processor learns nor any per-category metric."""
    rng = np.random.default_rng(0)
    n = 40
    classes = torch.tensor([0] * n + [1] * n)
    labels = torch.tensor(([0] * (n // 2) + [1] * (n // 2)) * 2)
    # class 1 scores live on another scale; test scores go beyond the validation range (no clamping ties)
    scale = torch.where(classes == 0, 1.0, 10.0)
    val_scores = scale * (torch.tensor(rng.random(2 * n), dtype=torch.float32) + 0.6 * labels)
    test_scores = scale * (torch.tensor(rng.random(2 * n), dtype=torch.float32) * 3 + 0.6 * labels)
    categories = ["a"] * n + ["b"] * n

    def run(pred_class):
        post_processor = ClassAwarePostProcessor(num_classes=2)
        evaluator = PerCategoryEvaluator(metrics=["image_AUROC"])
        trainer = SimpleNamespace(
            callbacks=[post_processor, evaluator], num_devices=1, log_dir=None, default_root_dir=None
        )
        evaluator.setup(trainer, None, "test")  # puts the evaluator before the post-processor
        assert trainer.callbacks == [evaluator, post_processor]
        validation = SimpleNamespace(
            pred_score=val_scores, gt_label=labels, class_index=classes, pred_class=pred_class,
            anomaly_map=None, gt_mask=None, image_path=None,
        )  # fmt: skip
        post_processor.on_validation_epoch_start(None, None)
        post_processor.on_validation_batch_end(None, None, validation)
        post_processor.on_validation_epoch_end(None, None)
        evaluator.on_test_start(None, None)
        decisions = []
        for start in range(0, 2 * n, 16):
            part = slice(start, start + 16)
            batch = SimpleNamespace(
                pred_score=test_scores[part].clone(), gt_label=labels[part], class_index=classes[part],
                pred_class=pred_class[part], anomaly_map=None, gt_mask=None, pred_label=None, pred_mask=None,
                category=categories[part], image_path=None,
            )  # fmt: skip
            for callback in trainer.callbacks:  # Lightning calls the hooks in list order
                callback.on_test_batch_end(trainer, None, batch, batch, 0)
            decisions.append(batch.pred_score)  # normalised by the post-processor, after the evaluator kept the raw
        return post_processor, evaluator.compute(), torch.cat(decisions)

    true_post, true_results, true_decisions = run(classes.clone())
    wrong = classes.clone()
    flip = torch.tensor(rng.random(2 * n) < 0.5)
    wrong[flip] = 1 - wrong[flip]
    wrong_post, wrong_results, wrong_decisions = run(wrong)
    assert torch.equal(true_post.class_image_threshold, wrong_post.class_image_threshold)
    for category in ("a", "b"):
        own = classes == (0 if category == "a" else 1)
        expected = roc_auc_score(labels[own].numpy(), test_scores[own].numpy())
        assert true_results[category]["image_AUROC"] == pytest.approx(expected, abs=1e-6)
        assert wrong_results[category]["image_AUROC"] == pytest.approx(expected, abs=1e-6)
    assert wrong_results == true_results
    # with labels at hand the post-processor normalises by the true class, not the prediction
    assert torch.equal(true_decisions, wrong_decisions)
    assert not torch.equal(true_decisions, test_scores)


def _statistics_of(values, regions=True):
    from anomalib_multiclass.statistics import StreamingStatistics

    statistics = StreamingStatistics(regions=regions)
    statistics.update(SimpleNamespace(**values, category=["c"] * len(values["pred_score"])))
    return statistics.reduce()


def test_every_default_metric_is_computed_on_well_defined_data():
    """Each metric the table prints (AUPRO included) is a number where the data defines it."""
    from anomalib_multiclass.evaluation.protocol import DEFAULT_METRICS, category_row

    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(8, 16, 16, generator=generator) > 0.8).int()
    masks[::2] = 0
    values = {
        "pred_score": torch.rand(8, generator=generator),
        "gt_label": torch.tensor([0, 1] * 4),
        "anomaly_map": torch.rand(8, 16, 16, generator=generator) + masks,
        "gt_mask": masks,
    }
    results, _, reasons = category_row(_statistics_of(values).categories["c"], DEFAULT_METRICS)
    assert reasons == []
    assert set(results) == set(DEFAULT_METRICS)
    assert all(0.0 <= value <= 1.0 for value in results.values()), results
    assert results["AUPRO"] > 0.5
    assert results["pixel_AUROC"] > 0.9


def test_metrics_on_reduced_values_never_synchronise_across_processes(tmp_path, monkeypatch):
    """Every process computes the table on statistics it already summed: a metric that synchronised on compute
    would wait for collectives the other ranks never enter (a deadlock). Nested metrics included."""
    import torch.distributed as dist
    import torchmetrics.metric

    from anomalib_multiclass.evaluation.protocol import DEFAULT_METRICS, category_row

    def refuse(*args, **kwargs):
        raise AssertionError("a metric tried to synchronise across processes")

    monkeypatch.setattr(torchmetrics.metric, "gather_all_tensors", refuse)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        masks = torch.zeros(4, 8, 8, dtype=torch.int)
        masks[1::2, 2:5, 2:5] = 1
        values = {
            "pred_score": torch.tensor([0.1, 0.9, 0.2, 0.8]),
            "gt_label": torch.tensor([0, 1, 0, 1]),
            "anomaly_map": torch.rand(4, 8, 8) + masks,
            "gt_mask": masks,
            "class_index": torch.zeros(4, dtype=torch.long),
        }
        statistics = _statistics_of(values)
        results, _, _ = category_row(statistics.categories["c"], DEFAULT_METRICS)
        assert results["image_AUROC"] == 1.0
        learnt = ClassAwarePostProcessor()._learn(statistics)
        assert 0.2 <= learnt["global"]["image_threshold"] <= 0.8 + 1e-6
    finally:
        dist.destroy_process_group()
