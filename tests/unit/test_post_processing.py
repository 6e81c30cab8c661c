from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anomalib_multiclass.models.components.base import MultiClassInferenceBatch
from anomalib_multiclass.post_processing import ClassAwarePostProcessor


def _validation_batch():
    # class 0 scores around 0.2 (normal) / 0.6 (anomalous); class 1 around 5.0 / 9.0: one global
    # threshold cannot separate both
    scores = torch.tensor([0.1, 0.2, 0.3, 0.6, 0.7, 4.0, 5.0, 5.5, 9.0, 9.5])
    labels = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0, 1, 1])
    classes = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    return SimpleNamespace(pred_score=scores, gt_label=labels, class_index=classes, anomaly_map=None, gt_mask=None)


def _test_batch():
    return SimpleNamespace(
        pred_score=torch.tensor([0.25, 0.65, 5.2, 9.2]),
        class_index=torch.tensor([0, 0, 1, 1]),
        anomaly_map=None,
        gt_mask=None,
        pred_label=None,
        pred_mask=None,
    )


def _fit(post_processor):
    batch = _validation_batch()
    post_processor.on_validation_batch_end(None, None, batch)
    post_processor.on_validation_epoch_end(None, None)
    return batch


def test_thresholds_are_learnt_per_category_and_applied_by_class():
    post_processor = ClassAwarePostProcessor(num_classes=2)
    _fit(post_processor)
    low, high = post_processor.class_image_threshold.tolist()
    assert low == pytest.approx(0.6) or 0.3 <= low < 0.6
    assert high == pytest.approx(9.0) or 5.5 <= high < 9.0
    test = _test_batch()
    post_processor.post_process_batch(test)
    assert test.pred_label.tolist() == [False, True, False, True], "every image right with its class's threshold"


def test_global_threshold_still_available_and_worse_here():
    post_processor = ClassAwarePostProcessor(num_classes=2, per_category=False)
    _fit(post_processor)
    test = _test_batch()
    post_processor.post_process_batch(test)
    assert test.pred_label.tolist() != [False, True, False, True]


def test_unknown_class_falls_back_to_the_global_threshold():
    post_processor = ClassAwarePostProcessor(num_classes=2)
    _fit(post_processor)
    test = SimpleNamespace(pred_score=torch.tensor([9.5]), anomaly_map=None, pred_label=None, pred_mask=None)
    post_processor.post_process_batch(test)
    assert (
        test.pred_score.item()
        == post_processor._normalize(
            torch.tensor([9.5]), post_processor.image_min, post_processor.image_max, post_processor.image_threshold
        ).item()
    )


def test_exported_forward_uses_the_predicted_class():
    post_processor = ClassAwarePostProcessor(num_classes=2)
    _fit(post_processor)
    out = post_processor(
        MultiClassInferenceBatch(pred_score=torch.tensor([0.65, 6.0]), pred_class=torch.tensor([0, 1]))
    )
    assert out.pred_label.tolist() == [True, False]
    assert torch.equal(out.pred_class, torch.tensor([0, 1]))


def test_per_class_values_survive_a_state_dict_round_trip():
    post_processor = ClassAwarePostProcessor(num_classes=2)
    _fit(post_processor)
    restored = ClassAwarePostProcessor(num_classes=2)
    restored.load_state_dict(post_processor.state_dict())
    assert torch.equal(restored.class_image_threshold, post_processor.class_image_threshold)
    table = restored.per_class_thresholds(["a", "b"])
    assert set(table) == {"a", "b", "global"}
    result = restored.apply(torch.tensor([0.65]), None, class_index=0)
    assert result["pred_label"].tolist() == [True]


def test_deploy_per_category_path_is_the_post_processor_maths():
    """The OpenVINO inferencer's `category=` path: the graph's raw outputs, normalised once for one category, equal
    the PyTorch post-processor applied to the raw scores of that category, also far beyond the validation range."""
    from anomalib_multiclass.deploy.inferencer import per_category_outputs, post_processor_from_metadata

    post_processor = ClassAwarePostProcessor(num_classes=2, image_sensitivity=0.4)
    _fit(post_processor)
    names = ["low", "high"]
    metadata = {
        "category_names": names,
        "thresholds": post_processor.per_class_thresholds(names),
        "post_processor": post_processor.checkpoint_config(),
    }
    deployed = post_processor_from_metadata(metadata)
    assert deployed.image_sensitivity == 0.4
    raw = torch.tensor([0.3, 0.65, 4.5, 5.1, 40.0, -7.0])
    for class_index in (0, 1):
        expected = post_processor.apply(raw, None, class_index)
        got = per_category_outputs(deployed, {"raw_pred_score": raw.numpy()}, class_index)
        np.testing.assert_allclose(got["pred_score"], expected["pred_score"].numpy(), atol=1e-5)
        assert got["pred_label"].tolist() == expected["pred_label"].tolist()
    assert not hasattr(post_processor, "undo_global_normalization")  # no clamp-then-undo path left
