import copy

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from anomalib_multiclass.data import MultiClassFolder
from anomalib_multiclass.models import UniAD
from anomalib_multiclass.models.components.attention import neighbor_mask
from anomalib_multiclass.models.uniad import UniADModel
from tests.conftest import TINY_UNIAD

MODEL_ARGS = {k: v for k, v in TINY_UNIAD.items()}


def _tiny_model(**overrides):
    return UniADModel(**{**MODEL_ARGS, **overrides})


def test_shapes_in_training_and_inference():
    model = _tiny_model()
    images = torch.rand(2, 3, 64, 64)
    model.train()
    out = model(images)
    assert out["features"].shape == out["reconstruction"].shape == (2, 192, 4, 4)
    model.eval()
    pred = model(images)
    assert pred.anomaly_map.shape == (2, 1, 64, 64)
    assert pred.pred_score.shape == (2,)
    pooled = torch.nn.functional.avg_pool2d(pred.anomaly_map, 4, stride=1).flatten(1).amax(1)
    assert torch.allclose(pred.pred_score, pooled)


def test_paper_configuration_channels_tokens_and_parameter_count():
    model = UniADModel(pre_trained=False)
    assert model.feature_extractor.num_features == 272
    assert model.feature_size == (14, 14)
    learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert learnable == 7_717_392
    queries = sum(layer.learned_query.numel() for layer in model.reconstruction.decoder)
    # the paper's 7.48 M matches the count without the four layer-wise query embeddings (README)
    assert abs((learnable - queries) - 7.48e6) / 7.48e6 < 0.005
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())


def test_neighbor_mask_buffer_is_the_7x7_band_and_not_in_the_state_dict():
    model = UniADModel(pre_trained=False)
    assert torch.equal(model.reconstruction.allowed, ~neighbor_mask(14, 14, 7))
    assert not any("allowed" in key for key in model.state_dict())


def test_jitter_only_in_training():
    torch.manual_seed(0)
    model = _tiny_model(dropout=0.0)
    features = model.extract_features(torch.rand(2, 3, 64, 64))
    model.train()
    assert not torch.allclose(model.reconstruct(features), model.reconstruct(features))
    model.eval()
    assert torch.equal(model.reconstruct(features), model.reconstruct(features))
    no_jitter = _tiny_model(dropout=0.0, jitter_scale=0.0).train()
    assert torch.equal(no_jitter.reconstruct(features), no_jitter.reconstruct(features))


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    module = UniAD(**MODEL_ARGS)
    optimizer = torch.optim.AdamW(module.model.reconstruction.parameters(), lr=3e-3)
    images = torch.rand(4, 3, 64, 64)
    module.model.train()
    losses = []
    for _ in range(30):
        out = module.model(images)
        loss = module.loss(out["reconstruction"], out["features"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_bfloat16_autocast_forward():
    model = _tiny_model().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(torch.rand(1, 3, 64, 64))
    assert torch.isfinite(pred.anomaly_map.float()).all()


def test_wrong_input_size_is_explained():
    model = _tiny_model().eval()
    with pytest.raises(ValueError, match="64x64"):
        model(torch.rand(1, 3, 96, 96))


class _Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def _train(root, cache: bool):
    seed_everything(7, workers=True)
    module = UniAD(**MODEL_ARGS, cache_features=cache)
    datamodule = MultiClassFolder(root=root, train_batch_size=6, eval_batch_size=6, num_workers=0, seed=0)
    recorder = _Losses()
    trainer = Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(module, datamodule=datamodule)
    return recorder.losses, module


def test_cached_and_uncached_training_give_the_same_losses(synthetic_root):
    cached, module = _train(synthetic_root, cache=True)
    uncached, _ = _train(synthetic_root, cache=False)
    assert module.feature_cache.hits > 0
    assert len(module.feature_cache) == 18
    assert len(cached) == len(uncached) == 9
    assert cached == pytest.approx(uncached, rel=1e-5)


def test_category_names_are_saved_with_the_checkpoint(synthetic_root, tmp_path):
    _, module = _train(synthetic_root, cache=True)
    assert module.category_names == ["brick", "coffee", "grass"]
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    restored = UniAD(**MODEL_ARGS)
    restored.on_load_checkpoint(copy.deepcopy(checkpoint))
    restored.load_state_dict(checkpoint["state_dict"])  # Lightning's order: the hook, then the weights
    assert restored.category_names == ["brick", "coffee", "grass"]
    assert restored.post_processor.num_classes == 3


def test_initialisation_follows_the_official_code():
    """Official UniAD: every Linear xavier-uniform with zero bias (its initializer), except the attention
    in-projections, which keep nn.MultiheadAttention's xavier on the packed 3d x d matrix."""
    from anomalib_multiclass.models.components.attention import MultiHeadAttention

    torch.manual_seed(0)
    reconstruction = UniADModel(pre_trained=False).reconstruction  # the paper's widths: 256, FFN 1024
    in_projections = {
        id(layer) for m in reconstruction.modules() if isinstance(m, MultiHeadAttention) for layer in m.in_projections
    }
    linears = [m for m in reconstruction.modules() if isinstance(m, torch.nn.Linear)]
    assert len(in_projections) == 3 * 12  # 4 encoder self-attentions, 2 x 4 decoder attentions
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        packed_rows = 3 * fan_out if id(layer) in in_projections else fan_out  # in-projections: packed (3d, d)
        bound = (6 / (fan_in + packed_rows)) ** 0.5
        assert layer.weight.abs().max() <= bound + 1e-6
        assert layer.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)  # U(-b, b): std b / sqrt(3)
        assert torch.count_nonzero(layer.bias) == 0


def test_a_pre_processor_of_another_size_is_refused_with_the_fix():
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    model = UniAD(**MODEL_ARGS, pre_processor=PreProcessor(transform=Resize((96, 96))))
    with pytest.raises(ValueError, match=r"built for \(64, 64\) images.*resizes to \(96, 96\).*input_size"):
        model.setup("fit")
    UniAD(**MODEL_ARGS, pre_processor=PreProcessor(transform=Resize((64, 64)))).setup("fit")  # same size: fine
