import math

import pytest
import torch
from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
from lightning.pytorch import Callback

from anomalib_multiclass.data.dataclasses import MultiClassImageBatch
from anomalib_multiclass.models.lgc import (
    LGC,
    LGCLoss,
    LGCModel,
    LocalContrastiveLoss,
    SupervisedContrastiveLoss,
    kmeans,
    lgc_view_transform,
)
from anomalib_multiclass.models.lgc.loss import match_positions
from anomalib_multiclass.models.lgc.mirrored_rd import (
    EncoderWidths,
    MirroredBottleneck,
    MirroredDecoder,
    uses_resnet_decoder,
)
from tests.conftest import TINY_LGC, TINY_LGC_LITE0

# the smallest input RD's stride allows, for the runs that train (the 64 px synthetic images are resized)
FAST_LGC = {**TINY_LGC, "input_size": (32, 32)}


@pytest.fixture(autouse=True)
def _flush_denormals():
    # randomly initialised RD training on a CPU produces denormal floats that make steps 10-50x slower
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def _tiny_model(**overrides) -> LGCModel:
    return LGCModel(**{**TINY_LGC, **overrides})


def test_shapes_in_training_and_inference():
    model = _tiny_model().train()
    images = torch.rand(3, 3, 64, 64)
    out = model(images, images.flip(-1))
    assert [f.shape[1:] for f in out["encoder"]] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    for key in ("projected", "decoder", "encoder_view", "projected_view"):
        assert [f.shape for f in out[key]] == [f.shape for f in out["encoder"]]
    assert out["bottleneck"].shape == out["bottleneck_view"].shape == (3, 512, 2, 2)
    model.eval()
    pred = model(images)
    assert pred.anomaly_map.shape == (3, 1, 64, 64)
    assert torch.allclose(pred.pred_score, pred.anomaly_map.flatten(1).amax(1))
    assert pred.pred_label is None
    assert pred.pred_class is None


def test_wide_resnet50_2_learnable_parameter_count():
    module = LGC(pre_trained=False)
    counts = module.count_parameters()
    assert counts["learnable"] == 71_233_984
    assert counts["frozen"] == 24_862_528  # the encoder, requires_grad off
    model = module.model
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not hasattr(model.bottleneck, "conv4")
    assert not hasattr(model.bottleneck, "bn4")
    assert sum(p.numel() for p in model.projector.parameters()) == 15_486_912
    optimised = sum(p.numel() for group in module.configure_optimizers().param_groups for p in group["params"])
    assert optimised == counts["learnable"]


def test_bottleneck_without_conv4_is_anomalibs_ocbe():
    model = _tiny_model().eval()
    reference = get_bottleneck_layer("resnet18").eval()
    missing, unexpected = reference.load_state_dict(model.bottleneck.state_dict(), strict=False)
    assert {k.split(".")[0] for k in missing} == {"conv4", "bn4"}
    assert not unexpected
    features = model.encode(torch.rand(2, 3, 64, 64))
    assert torch.equal(model.bottleneck(features), reference(features))


def _shapes(module):
    return sorted(tuple(p.shape) for p in module.parameters())


def test_mirrored_rd_on_resnet18_is_rds_own_plus_one_linear_head_per_stage():
    """The mirroring rule, read from resnet18's feature_info, rebuilds anomalib's resnet18 bottleneck and decoder."""
    import timm
    from anomalib.models.components.backbone import get_decoder

    encoder = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3), pretrained=False)
    info = encoder.feature_info
    widths = EncoderWidths(info.info, info.channels(), info.reduction())
    bottleneck, decoder = MirroredBottleneck(widths), MirroredDecoder(widths)
    reference = get_bottleneck_layer("resnet18")
    del reference.conv4, reference.bn4
    assert _shapes(bottleneck) == _shapes(reference)
    heads = [(c, c, 1, 1) for c in (64, 128, 256)] + [(c,) for c in (64, 128, 256)]
    assert _shapes(decoder) == sorted(_shapes(get_decoder("resnet18")) + heads)
    features = [f.detach() for f in encoder(torch.rand(2, 3, 64, 64))]
    z = bottleneck(features)
    assert z.shape == (2, 512, 2, 2)
    assert [d.shape for d in decoder(z)] == [f.shape for f in features]


def test_resnets_keep_rds_decoder_any_other_encoder_gets_the_mirrored_one():
    assert uses_resnet_decoder("wide_resnet50_2", ("layer1", "layer2", "layer3"))
    assert uses_resnet_decoder("resnet18.a1_in1k", (1, 2, 3))
    assert not uses_resnet_decoder("resnet18", ("layer2", "layer3"))
    assert not uses_resnet_decoder("tf_efficientnet_lite0", (1, 2, 3))
    assert _tiny_model().resnet_decoder
    assert isinstance(_tiny_model(layers=("layer2", "layer3")).decoder, MirroredDecoder)


def test_lite0_encoder_shapes_and_a_training_step():
    torch.manual_seed(0)
    module = LGC(**TINY_LGC_LITE0)
    model = module.model.train()
    assert not model.resnet_decoder
    assert len(model.encoder.extractor.feature_extractor.blocks) == 5  # the blocks after stage 3 (blocks.4) are dropped
    images = torch.rand(4, 3, 64, 64)
    out = model(images, images.flip(-1))
    assert [f.shape[1:] for f in out["encoder"]] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    assert [f.shape for f in out["decoder"]] == [f.shape for f in out["encoder"]]
    assert out["bottleneck"].shape == (4, 320, 2, 2)  # Lite0's next stage: 320 channels at stride 32
    optimizer = module.configure_optimizers()
    encoder_before = [p.clone() for p in model.encoder.parameters()]
    decoder_before = [p.clone() for p in model.decoder.parameters()]
    losses = module.loss(out, torch.tensor([0, 0, 1, 1]))
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(decoder_before, model.decoder.parameters(), strict=True))
    model.eval()
    prediction = model(images)
    assert prediction.anomaly_map.shape == (4, 1, 64, 64)
    assert torch.isfinite(prediction.anomaly_map).all()


def test_decoder_output_can_take_both_signs():
    """Lite0's stages end in a linear projection (features of both signs): the decoder's stages end linear too."""
    model = LGCModel(**{**TINY_LGC_LITE0, "pre_trained": False}).eval()
    features = model.encode(torch.rand(2, 3, 64, 64))
    assert all((f < 0).any() for f in features)
    decoded = model.reconstruct(model.projector(features))[1]
    assert all((d < 0).any() for d in decoded)


def test_input_size_must_be_a_multiple_of_twice_the_deepest_stride():
    with pytest.raises(ValueError, match=r"multiple of 32 \(deepest encoder stage used: stride 16"):
        LGCModel(**{**TINY_LGC_LITE0, "input_size": (48, 48)})
    assert LGCModel(**{**TINY_LGC_LITE0, "layers": (1, 2), "input_size": (48, 48)}).input_size == (48, 48)


def test_encoder_frozen_and_in_eval_mode_during_training():
    model = _tiny_model().train()
    assert not any(module.training for module in model.encoder.extractor.modules())  # batch-norm statistics fixed
    assert model.projector.training
    assert model.bottleneck.training


def test_optimizer_groups_and_trainer_arguments():
    module = LGC(**TINY_LGC)
    optimizer = module.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-3]
    assert optimizer.defaults["betas"] == (0.5, 0.999)
    assert module.trainer_arguments == {"gradient_clip_val": 5.0, "num_sanity_val_steps": 0}


def test_feature_noise_only_in_training_and_behind_its_flag():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    noisy = _tiny_model(feature_noise_prob=1.0).train()
    assert not torch.equal(noisy(images)["projected"][0], noisy(images)["projected"][0])
    clean = _tiny_model(feature_noise=False).train()
    assert torch.equal(clean(images)["projected"][0], clean(images)["projected"][0])
    noisy.eval()
    assert torch.equal(noisy(images).anomaly_map, noisy(images).anomaly_map)


def test_matching_finds_the_shifted_position():
    torch.manual_seed(0)
    anchor = torch.randn(2, 16, 6, 7)
    shifted = torch.roll(anchor, shifts=(1, 2), dims=(2, 3))
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(7), indexing="ij")
    expected = (((ys + 1) % 6) * 7 + (xs + 2) % 7).flatten()
    assert torch.equal(match_positions(anchor, shifted), expected.expand(2, -1))
    # a 5x5 window still reaches a (1, 2) shift except across the wrap-around border; k = 1 is the identity
    windowed = match_positions(anchor, shifted, window=5)
    interior = ((ys < 5) & (xs < 5)).flatten()
    assert torch.equal(windowed[:, interior], expected[interior].expand(2, -1))
    assert torch.equal(match_positions(anchor, shifted, window=1), torch.arange(42).expand(2, -1))
    nearby = match_positions(anchor, shifted, window=3)
    dy, dx = (nearby // 7 - ys.flatten()).abs(), (nearby % 7 - xs.flatten()).abs()
    assert int(dy.max()) <= 1
    assert int(dx.max()) <= 1


def test_supcon_equals_a_hand_computation():
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, -0.6]])
    labels = torch.tensor([0, 0, 1, 1])
    tau = 0.5
    loss = SupervisedContrastiveLoss(temperature=tau)(features, labels)
    unit = [(x / math.hypot(x, y), y / math.hypot(x, y)) for x, y in features.tolist()]
    total = 0.0
    for i in range(4):
        sims = {a: (unit[i][0] * unit[a][0] + unit[i][1] * unit[a][1]) / tau for a in range(4) if a != i}
        denominator = sum(math.exp(s) for s in sims.values())
        positives = [p for p in sims if labels[p] == labels[i]]
        total += -sum(math.log(math.exp(sims[p]) / denominator) for p in positives) / len(positives)
    assert loss.item() == pytest.approx(total / 4, rel=1e-5)


def test_local_loss_equals_a_hand_computation_and_drops_anchors_without_negative():
    torch.manual_seed(0)
    p, p_view = [torch.randn(2, 4, 1, 2, requires_grad=True)], [torch.randn(2, 4, 1, 2)]
    e = [torch.randn(2, 4, 1, 2)]
    loss_fn = LocalContrastiveLoss(temperature=0.2, window=1)
    labels = torch.tensor([0, 1])
    loss = loss_fn(p, p_view, e, e, labels)
    cos = torch.nn.functional.cosine_similarity
    expected = []
    for b, n in ((0, 1), (1, 0)):
        for i in range(2):
            pos = cos(p[0][b, :, 0, i], p_view[0][b, :, 0, i], dim=0) / 0.2
            neg = cos(p[0][b, :, 0, i], p_view[0][n, :, 0, i], dim=0) / 0.2
            expected.append(-torch.log(pos.exp() / (pos.exp() + neg.exp())))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    same = loss_fn(p, p_view, e, e, torch.tensor([0, 0]))
    assert same.item() == 0.0
    same.backward()  # still part of the graph


def test_each_loss_is_finite_and_decreases_on_a_tiny_run():
    torch.manual_seed(0)
    model = _tiny_model(feature_noise=False, input_size=(32, 32)).train()
    loss_fn = LGCLoss()
    # two "classes" (one random image each, two noisy copies); the views are flipped, shifted copies
    images = torch.rand(2, 1, 3, 32, 32).expand(2, 2, 3, 32, 32).reshape(4, 3, 32, 32)
    images = images + 0.05 * torch.randn_like(images)
    views = torch.roll(images.flip(-1), shifts=(2, 2), dims=(2, 3))
    labels = torch.tensor([0, 0, 1, 1])
    optimizer = torch.optim.Adam(
        [
            {"params": model.projector.parameters(), "lr": 1e-3},
            {"params": [*model.bottleneck.parameters(), *model.decoder.parameters()], "lr": 5e-3},
        ],
        betas=(0.5, 0.999),
    )
    history = {"kd": [], "local": [], "global": []}
    for _ in range(8):
        losses = loss_fn(model(images, views), labels)
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        for key in history:
            history[key].append(losses[key].item())
    for key, values in history.items():
        assert sum(values[-3:]) / 3 < sum(values[:3]) / 3, key


def test_contrastive_switch_off_is_the_kd_loss():
    torch.manual_seed(0)
    module = LGC(**TINY_LGC, contrastive=False, feature_noise=False)
    module.model.train()
    images = torch.rand(2, 3, 64, 64)
    batch = MultiClassImageBatch(image=images)  # no labels, no view needed
    loss = module.training_step(batch)["loss"]
    out = module.model(images)
    assert loss.item() == pytest.approx(ReverseDistillationLoss()(out["encoder"], out["decoder"]).item(), rel=1e-6)
    assert "encoder_view" not in out


def test_labels_and_view_are_needed_in_training_only():
    module = LGC(**TINY_LGC)
    module.model.eval()
    batch = MultiClassImageBatch(image=torch.rand(2, 3, 64, 64))
    assert batch.class_index is None
    assert batch.image_view is None
    predicted = module.validation_step(batch)
    assert predicted.pred_score.shape == (2,)
    assert predicted.anomaly_map.shape[-2:] == (64, 64)


def test_view_transform_draws_per_image_and_keeps_the_size():
    torch.manual_seed(0)
    transform = lgc_view_transform((64, 64))
    image = torch.rand(3, 80, 96)
    first, second = transform(image), transform(image)
    assert first.shape == second.shape == (3, 64, 64)
    assert not torch.equal(first, second)


def test_kmeans_recovers_well_separated_categories():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 10
    truth = torch.arange(4).repeat_interleave(12)
    features = centres[truth] + 0.1 * torch.randn(48, 16)
    found = kmeans(features, 4)
    # the same partition up to a renaming of the clusters
    assert torch.equal(found[:, None] == found[None, :], truth[:, None] == truth[None, :])
    assert kmeans(features[:5], 8).max() <= 4  # K larger than the data is clamped


class _Record(Callback):
    def __init__(self):
        self.views, self.labels = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        del trainer, pl_module, batch_idx
        assert torch.isfinite(outputs["loss"])
        self.views.append(None if batch.image_view is None else (batch.image_view.shape, batch.image.shape))
        self.labels.append(batch.class_index)


def test_fit_and_test_with_the_engine(synthetic_root, tmp_path):
    from anomalib.engine import Engine

    from anomalib_multiclass.data import MultiClassFolder

    torch.manual_seed(0)
    module = LGC(**FAST_LGC, visualizer=False)  # no heat-map pictures: seconds saved
    recorder = _Record()
    engine = Engine(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        callbacks=[recorder],
    )
    datamodule = MultiClassFolder(root=synthetic_root, num_workers=0, train_batch_size=6)
    engine.fit(module, datamodule=datamodule)
    assert len(recorder.views) == 3
    assert all(v is not None and v[0] == v[1] == (6, 3, 32, 32) for v in recorder.views)
    assert all(labels is not None for labels in recorder.labels)
    assert module._pseudo_label_of is None  # real categories were used
    results = engine.test(module, datamodule=datamodule)
    assert results
    assert all(math.isfinite(v) for v in results[0].values())


def test_pseudo_labels_when_forced(synthetic_root):
    from lightning.pytorch import Trainer

    from anomalib_multiclass.data import MultiClassFolder

    torch.manual_seed(0)
    module = LGC(**FAST_LGC, pseudo_labels=True, num_clusters=3)
    trainer = Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=MultiClassFolder(root=synthetic_root, num_workers=0, train_batch_size=6))
    assert len(module._pseudo_label_of) == 18
    assert set(module._pseudo_label_of.values()) <= {0, 1, 2}


def test_pseudo_labels_recover_the_generated_categories(synthetic_root, pretrained_lite0):
    """With real ImageNet features (LGC on EfficientNet-Lite0) the k-means pseudo-labels are the categories.

    Up to renaming; a random resnet18 splits the brick crops.
    """
    del pretrained_lite0  # installs the weights into the offline hub cache
    from pathlib import Path

    from lightning.pytorch import Trainer

    from anomalib_multiclass.data import MultiClassFolder

    torch.manual_seed(0)
    module = LGC(**{**TINY_LGC_LITE0, "pre_trained": True}, pseudo_labels=True, num_clusters=3)
    trainer = Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=MultiClassFolder(root=synthetic_root, num_workers=0, train_batch_size=6))
    found = module._pseudo_label_of
    category = {path: Path(path).parts[-4] for path in found}  # <root>/<category>/train/good/<image>
    assert set(category.values()) == {"brick", "coffee", "grass"}
    for a in found:
        for b in found:
            assert (found[a] == found[b]) == (category[a] == category[b]), (a, b)


def test_bfloat16_autocast_training_step_and_forward():
    """The mixed-precision path (``--trainer.precision bf16-mixed``) stays finite; CPU autocast stands in for CUDA."""
    torch.manual_seed(0)
    model = _tiny_model(input_size=(32, 32)).train()
    images = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = LGCLoss()(model(images, images.flip(-1)), torch.tensor([0, 0, 1, 1]))
    losses["loss"].backward()
    assert all(torch.isfinite(value) for value in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        reference = model(images).anomaly_map
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = model(images).anomaly_map.float()
    assert torch.isfinite(prediction).all()
    assert torch.corrcoef(torch.stack([prediction.flatten(), reference.flatten()]))[0, 1] > 0.9


def test_local_loss_gradients_repeat_exactly_on_two_threads():
    """Regression: the negative view taken by advanced indexing had a backward with unordered atomic additions on a
    multi-threaded CPU (above 32768 elements), so one seed gave different fits; index_select's backward is ordered."""
    generator = torch.Generator().manual_seed(0)
    p = [torch.randn(8, 32, 16, 16, generator=generator)]  # 65536 elements: above torch's 32768 for 2 threads
    p_view = torch.randn(8, 32, 16, 16, generator=generator)
    e = [torch.randn(8, 8, 16, 16, generator=generator)]
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])  # seven images all take image 7's view as their negative
    partner = torch.tensor([7, 7, 7, 7, 7, 7, 7, 0])
    loss_fn = LocalContrastiveLoss(window=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gradients = []
        for _ in range(5):
            view = p_view.clone().requires_grad_(True)
            loss_fn(p, [view], e, e, labels, negatives=(partner, torch.ones(8, dtype=torch.bool))).backward()
            gradients.append(view.grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(gradients[0], gradient) for gradient in gradients[1:])
