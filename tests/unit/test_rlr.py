"""RLR: shapes, masks, the efficient attention against the textbook form, perturbation, loss, parameter count."""

import pytest
import torch

from anomalib_multiclass.models import RLR
from anomalib_multiclass.models.components.attention import neighbor_mask, window_index
from anomalib_multiclass.models.rlr import RLRModel
from anomalib_multiclass.models.rlr.torch_model import sincos_position_table
from tests.conftest import TINY_RLR


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return RLRModel(pre_trained=False).eval()


def test_paper_configuration_parameter_count_and_shapes_at_256(paper_model):
    learnable = sum(p.numel() for p in paper_model.parameters() if p.requires_grad)
    assert learnable == 22_751_544  # the official code's count at the paper configuration (spec)
    frozen = sum(p.numel() for p in paper_model.parameters() if not p.requires_grad)
    assert frozen == 7_880_452  # EfficientNet-B6 cut after blocks.4, the last stage used
    assert paper_model.feature_sizes == [(64, 64), (32, 32), (16, 16)]
    assert [level.window_size for level in paper_model.levels] == [11, 7, 5]
    images = torch.rand(1, 3, 256, 256)
    features = paper_model.extract_features(images)
    assert [tuple(f.shape) for f in features] == [(1, 40, 64, 64), (1, 72, 32, 32), (1, 200, 16, 16)]
    with torch.no_grad():
        prediction = paper_model(images, features=features)
    assert prediction.anomaly_map.shape == (1, 1, 256, 256)
    assert prediction.pred_score.shape == (1,)


def test_other_input_size_builds_its_own_masks():
    model = RLRModel(**{**TINY_RLR, "input_size": (96, 64)}).eval()
    assert model.feature_sizes == [(24, 16), (12, 8), (6, 4)]
    assert model.levels[0].in_window.shape == (24 * 16, 24 * 16)
    prediction = model(torch.rand(2, 3, 96, 64))
    assert prediction.anomaly_map.shape == (2, 1, 96, 64)
    with pytest.raises(ValueError, match="96x64"):
        model(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize(("height", "width", "kernel"), [(64, 64, 11), (32, 32, 7), (16, 16, 5), (6, 9, 3)])
def test_window_masks_are_the_clipped_bands(height, width, kernel):
    near = neighbor_mask(height, width, kernel)
    index, valid = window_index(height, width, kernel)
    half = kernel // 2
    # centre token: the full k x k window; corner token: (k//2 + 1)^2 neighbours
    centre = (height // 2) * width + width // 2
    assert near[centre].sum() == min(kernel, height) * min(kernel, width) or height < kernel
    assert near[0].sum() == (half + 1) ** 2
    tokens = torch.arange(height * width)
    rows, cols = tokens // width, tokens % width
    expected = ((rows[:, None] - rows[None]).abs() <= half) & ((cols[:, None] - cols[None]).abs() <= half)
    assert torch.equal(near, expected)
    # the gathered window selects exactly the band's tokens, row by row
    gathered = torch.zeros_like(near)
    query = tokens[:, None].expand_as(index)
    gathered[query[valid], index[valid]] = True
    assert torch.equal(gathered, near)
    assert (~near).any(dim=1).all()  # MLKA never masks a whole row at these sizes


def test_rlr_model_buffers_match_the_levels():
    model = RLRModel(**TINY_RLR)
    for level, size, kernel in zip(model.levels, model.feature_sizes, TINY_RLR["windows"], strict=True):
        assert torch.equal(level.in_window, neighbor_mask(*size, kernel))
    assert not any("window" in key or "position" in key for key in model.state_dict())


def test_sincos_table_layout():
    table = sincos_position_table(2, 3, 8)
    assert table.shape == (6, 8)
    token = 1 * 3 + 2  # row 1, column 2
    assert table[token, 0] == pytest.approx(torch.sin(torch.tensor(2.0)).item())
    assert table[token, 1] == pytest.approx(torch.cos(torch.tensor(2.0)).item())
    assert table[token, 4] == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert table[token, 5] == pytest.approx(torch.cos(torch.tensor(1.0)).item())


def test_efficient_attention_equals_the_textbook_equations():
    torch.manual_seed(0)
    model = RLRModel(**{**TINY_RLR, "input_size": (128, 128), "jitter_scale": 0.0}).train()
    features = [f.double() for f in model.extract_features(torch.rand(2, 3, 128, 128))]
    model.double()  # float64: the two forms agree to rounding, so a real difference cannot hide in a tolerance
    outputs, grads = {}, {}
    for dense in (False, True):
        model.dense_attention = dense
        model.zero_grad()
        reconstructions = model.reconstruct(features)
        sum(r.square().sum() for r in reconstructions).backward()
        outputs[dense] = reconstructions
        grads[dense] = [p.grad.clone() for p in model.levels.parameters()]
    for fast, plain in zip(outputs[False], outputs[True], strict=True):
        torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)
    for fast, plain in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(fast, plain, rtol=1e-9, atol=1e-9)


def test_local_cross_attention_sees_only_its_window():
    torch.manual_seed(0)
    model = RLRModel(**{**TINY_RLR, "jitter_scale": 0.0}).eval()
    level = model.levels[0]
    block = level.blocks[0]
    height, width = level.feature_size
    tokens = torch.randn(1, height * width, 16)
    reference = torch.randn(1, height * width, 16, requires_grad=True)
    out = block.local_cross_attention(tokens, reference, reference, level.window, level.window_valid)
    out[0, 0].sum().backward()  # token 0 (a corner) depends on the reference inside its 5 x 5 window only
    touched = reference.grad[0].abs().sum(dim=1) > 0
    assert torch.equal(touched, level.in_window[0])


def test_perturbation_only_in_training():
    torch.manual_seed(0)
    model = RLRModel(**TINY_RLR)
    features = model.extract_features(torch.rand(2, 3, 64, 64))
    model.train()
    assert not torch.equal(model.reconstruct(features)[0], model.reconstruct(features)[0])
    model.eval()
    assert torch.equal(model.reconstruct(features)[0], model.reconstruct(features)[0])
    quiet = RLRModel(**{**TINY_RLR, "jitter_scale": 0.0}).train()
    assert torch.equal(quiet.reconstruct(features)[0], quiet.reconstruct(features)[0])


def test_score_is_the_max_of_the_blurred_map():
    model = RLRModel(**TINY_RLR).eval()
    prediction = model(torch.rand(2, 3, 64, 64))
    assert prediction.anomaly_map.shape == (2, 1, 64, 64)
    torch.testing.assert_close(prediction.pred_score, model.blur(prediction.anomaly_map).flatten(1).amax(1))


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    module = RLR(**TINY_RLR, lr=3e-3)
    optimizer = module.configure_optimizers()
    optimizer.param_groups[0]["lr"] = 3e-3
    images = torch.rand(4, 3, 64, 64)
    module.model.train()
    losses = []
    for _ in range(30):
        out = module.model(images)
        loss = module.loss(out["reconstructions"], out["features"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_optimizer_is_adam_on_the_learnable_parameters_only():
    module = RLR(**TINY_RLR)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 1e-4
    learnable = {id(p) for p in module.model.parameters() if p.requires_grad}
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == learnable
    assert module.count_parameters()["learnable"] == sum(p.numel() for p in module.model.levels.parameters())


def test_bfloat16_autocast_forward():
    model = RLRModel(**TINY_RLR).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prediction = model(torch.rand(1, 3, 64, 64))
    assert torch.isfinite(prediction.anomaly_map.float()).all()
