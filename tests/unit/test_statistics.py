"""Streamed statistics: every metric within 1e-3 of a direct reference (image metrics exact), bounded memory, the
same numbers whatever the batch order or the number of processes."""

import json
import logging
import math
import multiprocessing
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.metrics import AUPRO, F1AdaptiveThreshold
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomalib_multiclass.evaluation import PerCategoryEvaluator
from anomalib_multiclass.evaluation.protocol import DEFAULT_METRICS
from anomalib_multiclass.post_processing import ClassAwarePostProcessor
from anomalib_multiclass.statistics import DyadicHistogram, StreamingStatistics


def _data(seed=0, per_category=12, size=48):
    """Two categories on unrelated raw scales (one near 0.5, one near 1000), masks with several regions each."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for category, offset, scale in (("near_zero", 0.0, 0.4), ("offset", 1000.0, 55.0)):
        masks = torch.zeros(per_category, size, size, dtype=torch.bool)
        for i in range(per_category // 2, per_category):
            for _ in range(1 + i % 3):
                y, x = torch.randint(0, size - 10, (2,), generator=generator).tolist()
                h, w = torch.randint(2, 10, (2,), generator=generator).tolist()
                masks[i, y : y + h, x : x + w] = True
        noise = torch.rand(per_category, 1, size, size, generator=generator)
        maps = torch.nn.functional.avg_pool2d(noise, 5, 1, 2)[:, 0] + 0.25 * masks * torch.rand(
            per_category, 1, 1, generator=generator
        )
        maps = offset + scale * maps
        scores = maps.flatten(1).amax(dim=1) + torch.rand(per_category, generator=generator) * scale * 0.1
        for i in range(per_category):
            images.append((category, scores[i], int(masks[i].any()), maps[i], masks[i]))
    order = torch.randperm(len(images), generator=generator).tolist()
    return [images[i] for i in order]


def _batches(images, batch_size=5, classes=("near_zero", "offset")):
    for start in range(0, len(images), batch_size):
        part = images[start : start + batch_size]
        yield SimpleNamespace(
            category=[p[0] for p in part],
            class_index=torch.tensor([classes.index(p[0]) for p in part]),
            pred_score=torch.stack([p[1] for p in part]),
            gt_label=torch.tensor([p[2] for p in part]),
            anomaly_map=torch.stack([p[3] for p in part]).unsqueeze(1),
            gt_mask=torch.stack([p[4] for p in part]),
            image_path=[f"{p[0]}/{start + i:03d}.png" for i, p in enumerate(part)],
        )


def _reference(images, category):
    own = [p for p in images if p[0] == category]
    labels = np.array([p[2] for p in own])
    scores = torch.stack([p[1] for p in own]).double().numpy()
    maps = torch.stack([p[3] for p in own])
    masks = torch.stack([p[4] for p in own])
    pixels, truth = maps.flatten().double().numpy(), masks.flatten().numpy()

    def f1_max(y, s):
        precision, recall, _ = precision_recall_curve(y, s)
        return float(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))

    aupro = AUPRO(fields=["anomaly_map", "gt_mask"])
    aupro.update(SimpleNamespace(anomaly_map=(maps - maps.min()) / (maps.max() - maps.min()), gt_mask=masks.int()))
    return {
        "image_AUROC": roc_auc_score(labels, scores),
        "image_AP": average_precision_score(labels, scores),
        "image_F1Max": f1_max(labels, scores),
        "pixel_AUROC": roc_auc_score(truth, pixels),
        "pixel_AP": average_precision_score(truth, pixels),
        "pixel_F1Max": f1_max(truth, pixels),
        "AUPRO": float(aupro.compute()),
    }


def test_every_metric_is_within_1e3_of_its_reference_and_image_metrics_are_exact():
    images = _data()
    evaluator = PerCategoryEvaluator(metrics=DEFAULT_METRICS)
    for batch in _batches(images):
        evaluator.update(batch)
    results = evaluator.compute()
    for category in ("near_zero", "offset"):
        expected = _reference(images, category)
        for name, value in expected.items():
            got = results[category][name]
            if name.startswith("image"):
                assert got == pytest.approx(value, abs=1e-6), (category, name)
            else:
                bound = evaluator.table.bounds[category][name]
                assert abs(got - value) <= max(bound, 1e-6) + 1e-9, (category, name, got, value, bound)
                assert abs(got - value) <= 1e-3, (category, name, got, value)


def test_the_pooled_row_on_normalised_values_is_within_1e3_of_its_reference():
    images = _data(seed=4)
    post_processor = ClassAwarePostProcessor(num_classes=2)
    for number, batch in enumerate(_batches(images)):
        post_processor.on_validation_batch_end(None, None, batch, batch, number)
    post_processor.on_validation_epoch_end(None, None)
    evaluator = PerCategoryEvaluator(metrics=DEFAULT_METRICS, post_processor=post_processor)
    normalised = []
    for batch in _batches(images):
        evaluator.update(batch)
        post_processor.normalize_batch(batch)
        normalised.append(batch)
    results = evaluator.compute()["pooled"]
    truth = torch.cat([b.gt_mask for b in normalised]).flatten().numpy()
    pixels = torch.cat([b.anomaly_map for b in normalised]).flatten().double().numpy()
    labels = torch.cat([b.gt_label for b in normalised]).numpy()
    scores = torch.cat([b.pred_score for b in normalised]).double().numpy()
    assert results["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert results["pixel_AUROC"] == pytest.approx(roc_auc_score(truth, pixels), abs=1e-3)
    assert results["pixel_AP"] == pytest.approx(average_precision_score(truth, pixels), abs=1e-3)


def test_pooled_raw_values_of_unrelated_scales_say_how_loose_they_are(caplog):
    """Without a post-processor the pooled row mixes raw scales (0.5 and 1000): one grid spans both, and the
    table says how far its pixel values can be from the exact ones."""
    images = _data()
    evaluator = PerCategoryEvaluator(metrics=["pixel_AUROC"])
    for batch in _batches(images):
        evaluator.update(batch)
    with caplog.at_level(logging.WARNING):
        results = evaluator.compute()
    truth = torch.stack([p[4] for p in images]).flatten().numpy()
    pixels = torch.stack([p[3] for p in images]).flatten().double().numpy()
    bound = evaluator.table.bounds["pooled"]["pixel_AUROC"]
    assert abs(results["pooled"]["pixel_AUROC"] - roc_auc_score(truth, pixels)) <= bound
    assert bound > 1e-3
    assert any(r.getMessage().startswith("pooled: binned pixel metrics known only") for r in caplog.records)


def test_the_statistics_do_not_depend_on_batch_order_or_on_how_the_batches_are_split():
    images = _data(seed=1)
    forward, backward, halves = StreamingStatistics(), StreamingStatistics(), [StreamingStatistics() for _ in "ab"]
    for batch in _batches(images, 4):
        forward.update(batch)
    for batch in _batches(images[::-1], 7):
        backward.update(batch)
    for number, batch in enumerate(_batches(images, 3)):
        halves[number % 2].update(batch)
    for name in ("near_zero", "offset"):
        one = forward.reduce().categories[name].pixels
        other = backward.reduce().categories[name].pixels
        split = DyadicHistogram.merged([h.categories[name].pixels for h in halves])
        for histogram in (other, split):
            assert (histogram.exponent, histogram.start) == (one.exponent, one.start)
            assert torch.equal(histogram.counts[:2], one.counts[:2])  # counts: exactly equal
            assert torch.allclose(histogram.counts[2], one.counts[2], rtol=1e-12)  # region weights: float sums


def _held_bytes(value, seen=None):
    """Bytes of every tensor reachable from ``value`` (attributes, lists, dicts), each storage once."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, dict):
        return sum(_held_bytes(v, seen) for v in value.values())
    if isinstance(value, (float, int)):
        return 8
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple, set)):
        return sum(_held_bytes(v, seen) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return sum(_held_bytes(v, seen) for v in vars(value).values())
    return 0


def test_memory_does_not_grow_with_the_number_of_test_pixels():
    """What the evaluator holds grows by at most a few numbers per image, whatever the size of the maps."""

    def held(images):
        evaluator = PerCategoryEvaluator(metrics=DEFAULT_METRICS)
        generator = torch.Generator().manual_seed(0)
        for start in range(0, images, 8):
            masks = torch.rand(8, 128, 128, generator=generator) > 0.97
            evaluator.update(
                SimpleNamespace(
                    category=["a", "b"] * 4, pred_score=torch.rand(8, generator=generator),
                    gt_label=masks.any(-1).any(-1), anomaly_map=torch.rand(8, 1, 128, 128, generator=generator),
                    gt_mask=masks,
                    image_path=[f"{start + i}.png" for i in range(8)],
                )
            )  # fmt: skip
        return _held_bytes(evaluator)

    small, large = held(16), held(80)
    per_image = (large - small) / 64
    assert per_image <= 64, f"{per_image:.0f} bytes kept per 128 x 128 image"  # the old evaluator: ~82,000
    assert per_image >= 8  # the per-image numbers are counted (at least the score)
    assert small <= 3 * 3 * 2**17 * 8 + 2**20  # two categories' and the pooled histograms, plus small change


def test_an_extreme_outlier_is_reported_as_a_loose_bound(caplog):
    masks = torch.zeros(8, 32, 32, dtype=torch.bool)
    masks[4:, 10:20, 10:20] = True
    maps = torch.rand(8, 1, 32, 32) + masks.unsqueeze(1) * 0.2
    maps[0, 0, 0, 0] = 1e12  # one broken pixel stretches the range: every other pixel falls into one bin
    evaluator = PerCategoryEvaluator(metrics=["pixel_AUROC"])
    evaluator.update(SimpleNamespace(category=["c"] * 8, pred_score=torch.rand(8), gt_label=masks.any(-1).any(-1),
                                     anomaly_map=maps, gt_mask=masks))  # fmt: skip
    with caplog.at_level(logging.WARNING):
        evaluator.compute()
    assert evaluator.table.bounds["c"]["pixel_AUROC"] > 1e-3
    assert any("known only to within" in r.getMessage() and "pixel_AUROC" in r.getMessage() for r in caplog.records)


def test_a_nan_map_names_the_image():
    maps = torch.rand(2, 1, 8, 8)
    maps[1, 0, 3, 3] = math.nan
    batch = SimpleNamespace(
        category=["c", "c"], pred_score=torch.rand(2), gt_label=torch.tensor([0, 1]), anomaly_map=maps,
        gt_mask=torch.zeros(2, 8, 8), image_path=["ok.png", "broken.png"],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"broken\.png.*category 'c'"):
        PerCategoryEvaluator().update(batch)


def test_post_processor_thresholds_come_from_the_streamed_statistics():
    """Image thresholds and ranges exact; the pixel threshold's exact F1 within 1e-3 of the best F1."""
    images = _data(seed=2)
    post_processor = ClassAwarePostProcessor(num_classes=2)
    post_processor.on_validation_epoch_start(None, None)
    for number, batch in enumerate(_batches(images)):
        post_processor.on_validation_batch_end(None, None, batch, batch, number)
    post_processor.on_validation_epoch_end(None, None)
    for index, category in enumerate(("near_zero", "offset")):
        own = [p for p in images if p[0] == category]
        maps, masks = torch.stack([p[3] for p in own]), torch.stack([p[4] for p in own])
        truth, pixels = masks.flatten().numpy(), maps.flatten().double().numpy()
        precision, recall, _ = precision_recall_curve(truth, pixels)
        best = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
        called = pixels >= float(post_processor.class_pixel_threshold[index])
        true_positives = float((called & truth).sum())
        f1 = 2 * true_positives / (called.sum() + truth.sum())
        assert f1 == pytest.approx(best, abs=1e-3)
        assert float(post_processor.class_pixel_min[index]) == float(maps.min())
        assert float(post_processor.class_pixel_max[index]) == float(maps.max())
        exact_image = F1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False)
        exact_image.update(
            SimpleNamespace(pred_score=torch.stack([p[1] for p in own]), gt_label=torch.tensor([p[2] for p in own]))
        )
        assert float(post_processor.class_image_threshold[index]) == float(exact_image.compute())


def _rank(rank, world, store, result):
    """One DDP process: folds its shard of the batches as Lightning's DistributedSampler deals them (padding
    included), sums, computes the table."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        images = _data(seed=3, per_category=11)  # 22 images: 2 processes with batch 4 pad nothing, 3 pad 2
        total = math.ceil(len(images) / world) * world
        order = list(range(len(images))) + list(range(total - len(images)))  # the sampler repeats the first ones
        mine = [images[i] for i in order[rank:total:world]]
        evaluator = PerCategoryEvaluator(metrics=DEFAULT_METRICS)
        evaluator.statistics.sample_limit = math.ceil((len(images) - rank) / world)
        for batch in _batches(mine, 4):
            evaluator.update(batch)
        results = evaluator.compute()
        with open(result, "w") as handle:
            json.dump({"results": results, "images": evaluator.statistics.categories["offset"].num_images}, handle)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_processes_sum_their_statistics_into_the_one_process_table(world, tmp_path):
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_rank, args=(rank, world, tmp_path / "store", tmp_path / f"{rank}.json"))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    evaluator = PerCategoryEvaluator(metrics=DEFAULT_METRICS)
    for batch in _batches(_data(seed=3, per_category=11)):
        evaluator.update(batch)
    alone = json.loads(json.dumps(evaluator.compute()))
    for rank in range(world):
        ranked = json.loads((tmp_path / f"{rank}.json").read_text())
        assert ranked["images"] == 11  # the padding images were not counted again
        for row, values in alone.items():
            for name, value in values.items():
                assert ranked["results"][row][name] == pytest.approx(value, abs=1e-12), (world, rank, row, name)


def test_values_clamped_to_the_ends_are_exact_ties_not_binning_error():
    """Normalised maps are clamped to [0, 1]: the many pixels at exactly 0 or 1 tie, as the references count them."""
    generator = torch.Generator().manual_seed(5)
    masks = torch.rand(16, 32, 32, generator=generator) > 0.9
    maps = (torch.rand(16, 32, 32, generator=generator) * 1.6 - 0.5 + 0.4 * masks).clamp(0, 1)
    assert float((maps == 0).float().mean()) > 0.2
    assert float((maps == 1).float().mean()) > 0.05
    histogram = DyadicHistogram()
    for part in range(0, 16, 4):
        histogram.add(maps[part : part + 4], masks[part : part + 4])
    summary = histogram.summary()
    truth, pixels = masks.flatten().numpy(), maps.flatten().double().numpy()
    auroc, auroc_bound = summary.auroc()
    ap, ap_bound = summary.average_precision()
    assert auroc == pytest.approx(roc_auc_score(truth, pixels), abs=max(auroc_bound, 1e-9))
    assert ap == pytest.approx(average_precision_score(truth, pixels), abs=max(ap_bound, 1e-9))
    assert auroc_bound < 1e-4
    assert ap_bound < 1e-4


def test_placeholder_masks_of_a_category_without_masks_are_left_out_of_every_pixel_statistic():
    # issue 25, case 7: a category without ground truth carries all-zero placeholder masks flagged has_gt_mask=False
    images = _data(seed=3)
    flagged, only_masked = StreamingStatistics(), StreamingStatistics()
    for batch in _batches(images):
        batch.has_gt_mask = torch.tensor([c == "near_zero" for c in batch.category])
        batch.gt_mask = batch.gt_mask & batch.has_gt_mask[:, None, None]  # the placeholders: all zero
        flagged.update(batch, normaliser=lambda s, m, c: (s, m))
    for batch in _batches([p for p in images if p[0] == "near_zero"]):
        only_masked.update(batch, normaliser=lambda s, m, c: (s, m))
    offset = flagged.categories["offset"]
    assert offset.pixels.empty
    assert (offset.images_with_mask, offset.images_without_mask) == (0, 12)
    assert len(offset.scores) == 12, "its images still count at image level"
    near_zero, reference = flagged.categories["near_zero"], only_masked.categories["near_zero"]
    assert torch.equal(near_zero.pixels.counts, reference.pixels.counts)
    assert near_zero.regions == reference.regions
    assert torch.equal(flagged.pooled.counts, only_masked.pooled.counts), "the pooled pixels skip the placeholders"
    assert flagged.pooled_regions == only_masked.pooled_regions
