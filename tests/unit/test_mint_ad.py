import pytest
import torch

from anomalib_multiclass.models import MintAD
from anomalib_multiclass.models.mint_ad import ClassAwareINR, MintADModel
from anomalib_multiclass.models.mint_ad.loss import MintADLoss, gaussian_nll

TINY = {
    "backbone": "tf_efficientnet_lite0",
    "pre_trained": False,
    "input_size": (64, 64),
    "hidden_dim": 32,
    "num_heads": 4,
    "ffn_dim": 64,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
}


def test_inr_has_the_papers_size_and_depends_on_the_class_token():
    inr = ClassAwareINR(num_tokens=196)
    assert inr.parameter_count() == 602_368
    a = inr(torch.tensor([[1.0] + [0.0] * 31]))
    b = inr(torch.tensor([[0.0] * 31 + [1.0]]))
    assert a.shape == (1, 196, 256)
    assert not torch.allclose(a, b, atol=1e-4)


def test_paper_configuration_parts():
    model = MintADModel(num_classes=15, pre_trained=False)
    assert model.feature_size == (14, 14)
    assert sum(p.numel() for p in model.prompt_mapper.parameters()) == 2_296_367
    assert sum(p.numel() for p in model.distribution.parameters()) == 263_168
    assert model.reconstruction.allowed.all(), "no neighbour mask"
    assert all(layer.learned_query is None for layer in model.reconstruction.decoder), "no layer-wise query"


def test_shapes_and_label_free_inference():
    model = MintADModel(num_classes=3, **TINY)
    images = torch.rand(2, 3, 64, 64)
    model.train()
    out = model(images)
    assert out["logits"].shape == (2, 3)
    assert out["class_token"].shape == (2, 32)
    assert out["mean"].shape == out["log_var"].shape == out["adapted"].shape == (2, 16, 32)
    model.eval()
    prediction = model(images)  # no class index anywhere
    assert prediction.anomaly_map.shape == (2, 1, 64, 64)
    assert prediction.pred_class.shape == (2,)
    assert torch.allclose(prediction.pred_score, prediction.anomaly_map.flatten(1).amax(1))


def test_label_prompt_needs_and_uses_the_true_class():
    torch.manual_seed(0)
    model = MintADModel(num_classes=3, prompt="label", **TINY).eval()
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="class index"):
        model(images)
    a = model(images, class_index=torch.tensor([0, 0]))
    b = model(images, class_index=torch.tensor([1, 1]))
    assert (a.anomaly_map - b.anomaly_map).abs().max() > 1e-3


def test_gaussian_nll_matches_torch():
    value, mean, log_var = torch.randn(5), torch.randn(5), torch.randn(5)
    expected = torch.nn.functional.gaussian_nll_loss(mean, value, log_var.exp(), reduction="none")
    assert torch.allclose(gaussian_nll(value, mean, log_var), expected, atol=1e-6)


def test_each_loss_term_is_finite_and_decreases_and_the_classifier_learns():
    torch.manual_seed(0)
    model = MintADModel(num_classes=2, **{**TINY, "dropout": 0.0})
    loss_fn = MintADLoss()
    # two "categories" with different image statistics
    images = torch.cat([torch.rand(4, 3, 64, 64) * 0.3, 0.7 + torch.rand(4, 3, 64, 64) * 0.3])
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    features = model.extract_features(images)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    history = []
    for _ in range(60):
        losses = loss_fn(model(images, features=features), classes)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    for term in ("mse", "ce", "prior", "loss"):
        assert all(torch.isfinite(torch.tensor(h[term])) for h in history), term
        assert sum(h[term] for h in history[-5:]) < sum(h[term] for h in history[:5]), term
    model.eval()
    assert torch.equal(model(images, features=features).pred_class, classes)


def test_lightning_module_sizes_its_classifier_from_the_checkpoint():
    module = MintAD(classifier_classes=3, **TINY)
    checkpoint = {"state_dict": module.state_dict()}
    module.category_names = ["a", "b", "c"]
    module.on_save_checkpoint(checkpoint)
    restored = MintAD(**TINY)
    assert restored.model is None
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    assert restored.model.num_classes == 3
    assert restored.category_names == ["a", "b", "c"]


def test_a_checkpoint_without_categories_sizes_the_classifier_from_its_weights():
    # also a checkpoint saved when the argument was called ``num_classes`` (Lightning drops the unknown name)
    module = MintAD(classifier_classes=3, **TINY)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": {"num_classes": 3}}
    module.on_save_checkpoint(checkpoint)
    restored = MintAD(**TINY)
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    assert restored.model.num_classes == 3
    assert restored.num_classes is None  # no category map: the mixin's count stays unknown


def test_bfloat16_autocast_training_step_and_forward():
    """The mixed-precision path (``--trainer.precision bf16-mixed``) stays finite; CPU autocast stands in for CUDA."""
    torch.manual_seed(0)
    model = MintADModel(num_classes=2, **TINY)
    images = torch.rand(2, 3, 64, 64)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = MintADLoss()(model(images), torch.tensor([0, 1]))
    assert all(torch.isfinite(value.float()) for value in losses.values())
    losses["loss"].backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prediction = model(images)
    assert torch.isfinite(prediction.anomaly_map.float()).all()
    assert prediction.pred_class.shape == (2,)
