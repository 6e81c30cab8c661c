import types

import pytest
import torch
import torch.nn.functional as F

from anomalib_multiclass.models.omni_ad import OmniAD, OmniADModel, OmniBlock
from anomalib_multiclass.models.omni_ad.blocks import PatchExpand, attention_with_bias
from anomalib_multiclass.models.omni_ad.loss import OmniADLoss
from tests.conftest import TINY_OMNI_AD

# learnable parameters at the paper configuration (ResNet-34, T = 64, depths 3-9-9-7), see the model README
DEFAULT_LEARNABLE = 27_987_904  # registered, trained Linear-SiLU-Linear output maps
OFFICIAL_LEARNABLE = 21_756_608  # released code: output maps not registered
RESNET34_TEACHER = 8_170_304
NECK = 1_458_304


def _tiny(**overrides) -> OmniADModel:
    return OmniADModel(**{**TINY_OMNI_AD, **overrides})


def _learnable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def paper_model() -> OmniADModel:
    torch.manual_seed(0)
    return OmniADModel(pre_trained=False)


def test_paper_configuration_counts_and_shapes_at_256(paper_model):
    model = paper_model
    assert model.teacher.out_dims == [64, 128, 256]
    assert model.dims == [512, 256, 128, 64]
    assert [len(stage) for stage in model.decoder.stages] == [3, 9, 9, 7]
    assert _learnable(model) == DEFAULT_LEARNABLE
    assert sum(p.numel() for p in model.teacher.parameters()) == RESNET34_TEACHER
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert sum(p.numel() for p in model.neck.parameters()) == NECK
    model.train()
    assert not model.teacher.extractor.training  # frozen BN statistics whatever the parent's mode
    model.eval()
    with torch.no_grad():
        pred = model(torch.rand(1, 3, 256, 256))
    assert pred.anomaly_map.shape == (1, 1, 256, 256)
    assert pred.pred_score.shape == (1,)
    assert torch.allclose(pred.pred_score, pred.anomaly_map.flatten(1).amax(1))


def test_official_configuration_parameter_count():
    model = OmniADModel(pre_trained=False, official_code_behaviour=True)
    assert _learnable(model) == OFFICIAL_LEARNABLE
    assert _learnable(model) + RESNET34_TEACHER == 29_926_912  # the paper's 29.9 M
    # the output maps are unregistered: the difference is exactly 4D² + 4D per block
    per_block = sum(depth * (4 * dim * dim + 4 * dim) for dim, depth in zip(model.dims, (3, 9, 9, 7), strict=True))
    assert DEFAULT_LEARNABLE - OFFICIAL_LEARNABLE == per_block == 6_231_296
    assert not any(key.startswith("decoder") and "_eval_" in key for key in model.state_dict())


def test_block_shapes_and_non_square_map():
    block = OmniBlock(dim=16, feature_size=(4, 6), num_tokens=4, num_heads=2)
    x = torch.rand(2, 4, 6, 16)
    assert block(x).shape == (2, 4, 6, 16)
    with pytest.raises(ValueError, match="perfect square"):
        OmniBlock(dim=16, feature_size=(4, 4), num_tokens=8, num_heads=2)


def test_tiny_shapes_in_training_and_inference():
    model = _tiny()
    images = torch.rand(2, 3, 64, 64)
    model.train()
    out = model(images)
    assert [tuple(f.shape) for f in out["features"]] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert [r.shape for r in out["reconstructions"]] == [f.shape for f in out["features"]]
    model.eval()
    pred = model(images)
    assert pred.anomaly_map.shape == (2, 1, 64, 64)
    assert pred.pred_score.shape == (2,)


def test_non_default_input_size():
    model = _tiny(input_size=(96, 64), num_tokens=16).eval()
    pred = model(torch.rand(1, 3, 96, 64))
    assert pred.anomaly_map.shape == (1, 1, 96, 64)
    with pytest.raises(ValueError, match="96x64"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        _tiny(input_size=(80, 64))


def test_dims_must_match_the_teacher():
    assert _tiny(dims=(64, 112, 40, 24)).neck.bottleneck[-1].conv3.out_channels == 64
    with pytest.raises(ValueError, match="112, 40, 24"):
        _tiny(dims=(224, 128, 40, 24))


def test_attention_bias_after_softmax_matches_the_explicit_form():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 8, dtype=torch.float64) for n in (5, 7, 7))
    for bias in (torch.randn(1, 4, 5, 1, dtype=torch.float64), torch.randn(1, 4, 1, 7, dtype=torch.float64)):
        expected = attention_with_bias(q, k, v, bias, explicit=True)
        assert torch.allclose(attention_with_bias(q, k, v, bias), expected, atol=1e-12)
    block = OmniBlock(dim=16, feature_size=(4, 4), num_tokens=4, num_heads=2).double()
    with torch.no_grad():
        block.pe1.normal_()
        block.pe2.normal_()
    x = torch.randn(2, 4, 4, 16, dtype=torch.float64)
    assert torch.allclose(block(x), block(x, explicit_attention=True), atol=1e-10)


def test_token_upsampling_is_nearest_interpolation():
    for size, tokens in (((8, 8), 64), ((16, 8), 64), ((2, 2), 16), ((6, 4), 4)):
        block = OmniBlock(dim=8, feature_size=size, num_tokens=tokens, num_heads=2)
        grid = int(tokens**0.5)
        values = torch.randn(1, tokens, 8)
        as_map = values.reshape(1, grid, grid, 8).permute(0, 3, 1, 2)
        expected = F.interpolate(as_map, size=size, mode="nearest").flatten(2).transpose(1, 2)
        assert torch.equal(values.index_select(1, block.up_index), expected)


def test_patch_expand_channel_order():
    expand = PatchExpand(6, 3)
    x = torch.randn(1, 2, 2, 6)
    projected = expand.expand(x)  # (1, 2, 2, 12): (p1, p2, c) with c fastest
    out = expand(x)
    for p1 in range(2):
        for p2 in range(2):
            chunk = projected[..., (2 * p1 + p2) * 3 : (2 * p1 + p2 + 1) * 3]
            assert torch.allclose(out[:, p1::2, p2::2], expand.norm(chunk))


def _token_gradients(official: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    block = OmniBlock(dim=16, feature_size=(4, 4), num_tokens=4, num_heads=2, official_code_behaviour=official)
    block = block.double().train()
    x = torch.randn(2, 4, 4, 16, dtype=torch.float64)
    F.mse_loss(block(x), torch.randn_like(x)).backward()
    return block.query_tokens.grad[0], block.kv_tokens.grad[0]


def test_learnable_tokens_receive_gradients():
    """Q̄ and S̄ both learn, with a different gradient per token (the symmetry of zero tokens is broken)."""
    for grad in _token_gradients(official=False):
        assert grad.abs().max() > 1e-12
        assert (grad - grad.mean(dim=0)).abs().max() > 0.1 * grad.abs().max()


def test_official_behaviour_reproduces_the_inert_key_value_tokens():
    """Released code: S̄ starts at zero, all its tokens get the same, vanishing gradient (MHA-2 is inert)."""
    query_grad, kv_grad = _token_gradients(official=True)
    assert query_grad.abs().max() > 1e-12
    assert kv_grad.abs().max() < 1e-15
    assert torch.allclose(kv_grad, kv_grad[:1].expand_as(kv_grad), rtol=0, atol=1e-18)


def test_default_decoder_tokens_all_get_gradients():
    """Every block of the whole model: non-zero, token-specific gradients to Q̄ and S̄."""
    torch.manual_seed(0)
    model = _tiny(jitter_scale=0.0).train()
    out = model(torch.rand(2, 3, 64, 64))
    OmniADLoss()(out["reconstructions"], out["features"]).backward()
    for block in (block for stage in model.decoder.stages for block in stage):
        for grad in (block.query_tokens.grad[0], block.kv_tokens.grad[0]):
            assert grad.abs().max() > 0
            assert (grad - grad.mean(dim=0)).abs().max() > 0.01 * grad.abs().max()


def test_eval_is_deterministic_in_both_behaviours():
    images = torch.rand(2, 3, 64, 64)
    for official in (False, True):
        model = _tiny(official_code_behaviour=official).eval()
        first, second = model(images), model(images)
        assert torch.equal(first.anomaly_map, second.anomaly_map)
        assert torch.equal(first.pred_score, second.pred_score)


def test_official_training_maps_are_drawn_per_call():
    model = _tiny(official_code_behaviour=True, jitter_scale=0.0).train()
    features = model.extract_features(torch.rand(2, 3, 64, 64))
    assert not torch.allclose(model.reconstruct(features)[0], model.reconstruct(features)[0])
    block = model.decoder.stages[0][0]
    assert block.proj1 is None
    assert torch.count_nonzero(block.query_tokens) == torch.count_nonzero(block.kv_tokens) == 0


def test_jitter_only_in_training():
    torch.manual_seed(0)
    model = _tiny()
    features = model.extract_features(torch.rand(2, 3, 64, 64))
    model.train()
    assert not torch.allclose(model.reconstruct(features)[0], model.reconstruct(features)[0])
    model.eval()
    assert torch.equal(model.reconstruct(features)[0], model.reconstruct(features)[0])
    no_jitter = _tiny(jitter_scale=0.0).train()
    assert torch.equal(no_jitter.reconstruct(features)[0], no_jitter.reconstruct(features)[0])


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    module = OmniAD(**TINY_OMNI_AD)
    optimizer = module.configure_optimizers()["optimizer"]
    model = module.model.train()
    images = torch.rand(4, 3, 64, 64)
    features = model.extract_features(images)
    losses = []
    for _ in range(20):
        out = model(images, features=features)
        loss = module.loss(out["reconstructions"], out["features"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_optimizer_groups_and_step_decay_at_80_percent():
    module = OmniAD(**TINY_OMNI_AD)
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=100)
    config = module.configure_optimizers()
    module._trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4
    assert no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim < 2 for p in no_decay["params"])
    block = module.model.decoder.stages[0][0]
    decayed = {id(p) for p in decay["params"]}
    assert {id(block.query_tokens), id(block.kv_tokens), id(block.pe1), id(block.pe2)} <= decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(
        [p for p in module.model.parameters() if p.requires_grad]
    )
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[79] == pytest.approx(1e-3)
    assert lrs[80] == pytest.approx(1e-4)
    assert module.trainer_arguments == {"gradient_clip_val": 5.0, "num_sanity_val_steps": 0}


def test_engine_fit_and_test(synthetic_root, tmp_path):
    from anomalib.engine import Engine

    from anomalib_multiclass.data import MultiClassFolder

    torch.manual_seed(0)
    module = OmniAD(**TINY_OMNI_AD)
    assert module.count_parameters()["learnable"] == _learnable(module.model)
    engine = Engine(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    datamodule = MultiClassFolder(root=synthetic_root, num_workers=0, train_batch_size=6)
    engine.fit(module, datamodule=datamodule)
    assert module.category_names == ["brick", "coffee", "grass"]
    assert len(module.feature_cache) == 18  # teacher maps cached for every training image
    results = engine.test(module, datamodule=datamodule)
    assert results
    assert any("AUROC" in key for key in results[0])
    assert not torch.isnan(module.post_processor.image_min)


def test_bfloat16_autocast_training_step_and_forward():
    """The mixed-precision path (``--trainer.precision bf16-mixed``) stays finite; CPU autocast stands in for CUDA."""
    torch.manual_seed(0)
    module = OmniAD(**TINY_OMNI_AD)
    model = module.model.train()
    images = torch.rand(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        loss = module.loss(out["reconstructions"], out["features"])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        reference = model(images).anomaly_map
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = model(images).anomaly_map.float()
    assert torch.isfinite(prediction).all()
    assert torch.corrcoef(torch.stack([prediction.flatten(), reference.flatten()]))[0, 1] > 0.9
