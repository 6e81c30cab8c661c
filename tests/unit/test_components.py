import numpy as np
import pytest
import torch
from torch import nn

from anomalib_multiclass.models.components.attention import MultiHeadAttention, neighbor_mask
from anomalib_multiclass.models.components.blur import (
    MatrixGaussianBlur2d,
    align_corners_matrix,
    reflected_band_matrix,
)
from anomalib_multiclass.models.components.feature_cache import FrozenFeatureCache
from anomalib_multiclass.models.components.jitter import feature_jitter
from anomalib_multiclass.models.components.transformer import LearnedPositionEmbedding


def test_neighbor_mask_is_the_clipped_k_by_k_band():
    mask = neighbor_mask(5, 6, 3)
    assert mask.shape == (30, 30)
    grid = mask[2 * 6 + 3].reshape(5, 6)  # token at row 2, column 3
    expected = torch.zeros(5, 6, dtype=torch.bool)
    expected[1:4, 2:5] = True
    assert torch.equal(grid, expected)
    corner = mask[0].reshape(5, 6)
    assert corner.sum() == 4
    assert corner[:2, :2].all()
    assert torch.equal(mask, mask.T)
    seven = neighbor_mask(14, 14, 7)
    assert seven[7 * 14 + 7].sum() == 49
    assert seven[0].sum() == 16


def test_attention_matches_torch_multihead_attention_with_the_same_weights():
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4).eval()
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 12, 16)
    allowed = ~neighbor_mask(3, 4, 3)
    expected, _ = ref(x, x, x, attn_mask=~allowed, need_weights=False)
    assert torch.allclose(ours(x, x, x, allowed), expected, atol=1e-5)


def test_jitter_scales_with_the_token_norm_and_can_be_off():
    torch.manual_seed(0)
    tokens = torch.randn(4, 100, 64) * torch.tensor([1.0, 10.0, 100.0, 1000.0])[:, None, None]
    noisy = feature_jitter(tokens, scale=20.0)
    ratio = (noisy - tokens).std(dim=(1, 2)) / (tokens.norm(dim=-1).mean(dim=1) / 64 * 20)
    assert torch.allclose(ratio, torch.ones(4), atol=0.05)
    assert torch.equal(feature_jitter(tokens, scale=0.0), tokens)
    assert torch.equal(feature_jitter(tokens, scale=20.0, prob=0.0), tokens)


def test_position_embedding_is_row_major_columns_then_rows():
    embed = LearnedPositionEmbedding(3, 4, 8)
    pos = embed()[0]
    assert pos.shape == (12, 8)
    assert torch.equal(pos[5, :4], embed.col_embed[1])
    assert torch.equal(pos[5, 4:], embed.row_embed[1])


def test_feature_cache_returns_what_was_computed_and_respects_its_bound():
    calls = []

    def compute(images):
        calls.append(len(images))
        return images * 2

    cache = FrozenFeatureCache(max_bytes=None)
    images = torch.randn(3, 2, 4)
    first = cache.get_or_compute(["a", "b", "c"], images, compute)
    again = cache.get_or_compute(["c", "a"], images[[2, 0]], compute)
    assert calls == [3]
    assert torch.equal(again, first[[2, 0]])
    small = FrozenFeatureCache(max_bytes=2 * 2 * 4 * 4)  # room for two images
    small.get_or_compute(["a", "b", "c"], images, compute)
    assert len(small) == 2
    small.get_or_compute(["a", "b", "c"], images, compute)
    assert calls == [3, 3, 3], "a batch with an uncached image is recomputed"
    off = FrozenFeatureCache(enabled=False)
    off.get_or_compute(["a"], images[:1], compute)
    off.get_or_compute(["a"], images[:1], compute)
    assert calls[-2:] == [1, 1]


def test_feature_cache_handles_lists_of_maps():
    cache = FrozenFeatureCache()
    images = torch.randn(2, 3)
    first = cache.get_or_compute(["x", "y"], images, lambda im: [im, im * 3])
    second = cache.get_or_compute(["y", "x"], images[[1, 0]], lambda im: pytest.fail("should come from the cache"))
    assert torch.equal(second[1], first[1][[1, 0]])


@pytest.mark.parametrize(
    ("size", "kwargs"),
    [
        ((64, 64), {"sigma": 4.0, "kernel_size": 33}),
        ((48, 40), {"sigma": (4.0, 4.0)}),
        ((20, 28), {"sigma": (1.0, 2.0)}),
    ],
)
def test_matrix_blur_is_anomalibs_gaussian_blur(size, kwargs):
    """Two banded matrix products give anomalib's reflected 2-D convolution; the checkpoint keeps its one buffer."""
    from anomalib.models.components import GaussianBlur2d

    torch.manual_seed(0)
    reference, ours = GaussianBlur2d(channels=1, **kwargs), MatrixGaussianBlur2d(channels=1, size=size, **kwargs)
    maps = torch.rand(3, 1, *size)
    torch.testing.assert_close(ours(maps), reference(maps), atol=1e-5, rtol=0)
    other = torch.rand(2, 1, size[0] + 4, size[1] + 2)  # another size: anomalib's convolution itself
    torch.testing.assert_close(ours(other), reference(other))
    assert list(ours.state_dict()) == list(reference.state_dict()) == ["kernel"]
    ours.load_state_dict(reference.state_dict())


def test_reflected_band_matrix_reflects_like_torch_pad():
    kernel = torch.tensor([0.25, 0.5, 0.25])
    signal = torch.arange(6.0)
    matrix = torch.from_numpy(reflected_band_matrix(6, kernel.double().numpy())).float()
    padded = nn.functional.pad(signal.view(1, 1, -1), (1, 1), mode="reflect")
    torch.testing.assert_close(matrix @ signal, nn.functional.conv1d(padded, kernel.view(1, 1, -1)).flatten())
    with pytest.raises(ValueError, match="at least 3 pixels"):
        reflected_band_matrix(2, np.ones(5) / 5)


@pytest.mark.parametrize(
    ("size", "sources"), [((128, 128), [(32, 32), (16, 16), (8, 8)]), ((48, 80), [(12, 20), (6, 10), (1, 5)])]
)
def test_upsampled_mean_is_interpolate_mean_and_blur(size, sources):
    """The anomaly map of Omni-AD and LGC: upsampling folded into the blur's matrices gives the same map."""
    from anomalib.models.components import GaussianBlur2d

    torch.manual_seed(0)
    ours = MatrixGaussianBlur2d(sigma=(4.0, 4.0), channels=1, size=size, sources=sources)
    reference = GaussianBlur2d(sigma=(4.0, 4.0), channels=1)
    maps = [torch.rand(2, 1, *source) for source in sources]
    upsampled = [nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=True) for m in maps]
    expected = reference(torch.stack(upsampled).mean(dim=0))
    torch.testing.assert_close(ours.upsampled_mean(maps, size), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.upsampled_mean(maps[:2], size), reference(torch.stack(upsampled[:2]).mean(0)))
    assert list(ours.state_dict()) == ["kernel"]
    line = torch.rand(1, 1, 1, 7)
    resampled = nn.functional.interpolate(line, size=(1, 19), mode="bilinear", align_corners=True).flatten()
    torch.testing.assert_close(torch.from_numpy(align_corners_matrix(19, 7)).float() @ line.flatten(), resampled)
