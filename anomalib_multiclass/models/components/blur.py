"""The anomaly map's Gaussian blur as two matrix products (issue 27: what made INT8 slower than fp32 on a CPU).

anomalib's ``GaussianBlur2d`` convolves the one-channel anomaly map with the full 2-D kernel: 33 × 33 = 1,089
multiply-adds per pixel for σ = 4, in a convolution with one input and one output channel that a CPU's vector
units cannot fill. In OpenVINO on an AVX-512 CPU that single layer was the costliest of Omni-AD's and LGC's graphs
(a third of the fp32 time at batch 32, over half of the INT8 graph's, where it runs in bf16, about 3 × slower than in
f32; ``benchmarks/results/edge.md``). It stays in floating point in INT8 exports by design
(``anomaly_map_operations``), so quantizing the rest could not make up for it.

A Gaussian kernel is the outer product of two 1-D kernels, and "same" padding by reflection is linear, so the blur
of an (H, W) map is ``R @ X @ C.T`` with R (H × H) and C (W × W) banded matrices that hold the 1-D kernel with the
reflected border folded in: 2 (H + W) multiply-adds per pixel as a dense matrix product, which a CPU runs at close
to its peak. The result equals anomalib's convolution up to float rounding; the ``kernel`` buffer (and so every
checkpoint) is unchanged, the matrices are built from it and not saved.

Omni-AD and LGC blur the mean of three stage maps upsampled (bilinear, corners aligned) to the image: upsampling is
linear too, so :meth:`MatrixGaussianBlur2d.upsampled_mean` folds it into the blur's matrices, two small products per
stage map, and the upsampled maps are never formed (their ``Interpolate`` layers were the next costliest float
layers of the INT8 graphs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from anomalib.models.components import GaussianBlur2d


def reflected_band_matrix(size: int, kernel: np.ndarray) -> np.ndarray:
    """(size, size) matrix M with ``M @ x`` = the 1-D "same" convolution of ``x`` with ``kernel``, border reflected.

    Reflection as ``torch.nn.functional.pad(mode="reflect")``: index -1 reads 1, index ``size`` reads ``size - 2``.
    """
    half = len(kernel) // 2
    if half >= size:
        msg = f"A {len(kernel)}-tap kernel needs a map of at least {half + 1} pixels to reflect its border, got {size}."
        raise ValueError(msg)
    matrix = np.zeros((size, size))
    for offset, weight in zip(range(-half, half + 1), kernel, strict=True):
        source = np.arange(size) + offset
        source = np.where(source < 0, -source, source)
        source = np.where(source >= size, 2 * (size - 1) - source, source)
        np.add.at(matrix, (np.arange(size), source), weight)
    return matrix


def align_corners_matrix(size: int, source: int) -> np.ndarray:
    """(size, source) matrix M with ``M @ x`` = ``x`` linearly resampled to ``size`` points, corners aligned.

    One axis of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=True)``.
    """
    matrix = np.zeros((size, source))
    position = np.arange(size) * ((source - 1) / (size - 1) if size > 1 else 0.0)
    low = np.clip(np.floor(position).astype(int), 0, source - 1)
    high = np.minimum(low + 1, source - 1)
    np.add.at(matrix, (np.arange(size), low), 1 - (position - low))
    np.add.at(matrix, (np.arange(size), high), position - low)
    return matrix


class MatrixGaussianBlur2d(GaussianBlur2d):
    """anomalib's ``GaussianBlur2d`` (same arguments, same ``kernel`` buffer, same output) as two matrix products.

    Args:
        sigma, channels, kernel_size: as anomalib's ``GaussianBlur2d`` (reflected border, "same" size).
        size: (H, W) of the maps the model blurs (its input size): the two banded matrices are built for it. Maps of
            another size go through anomalib's convolution.
        sources: (h, w) of the maps that :meth:`upsampled_mean` upsamples to ``size`` before the blur (the feature
            maps' sizes): each gets the product of the bilinear upsampling and the blur, two small matrices.
    """

    def __init__(
        self,
        sigma: float | tuple[float, float],
        channels: int = 1,
        kernel_size: int | tuple[int, int] | None = None,
        size: Sequence[int] | None = None,
        sources: Sequence[Sequence[int]] = (),
    ) -> None:
        super().__init__(sigma=sigma, channels=channels, kernel_size=kernel_size)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        rows, cols = torch.empty(0, 0), torch.empty(0, 0)
        if self.size is not None:
            kernel = self.kernel[0, 0].double().numpy()
            total = kernel.sum()
            # rank one: kernel = outer(column sums, row sums) / total (normalised: both sum to one)
            rows = torch.from_numpy(reflected_band_matrix(self.size[0], kernel.sum(axis=1) / total)).float()
            cols = torch.from_numpy(reflected_band_matrix(self.size[1], kernel.sum(axis=0))).float()
        self.rows_t: torch.Tensor
        self.cols_t: torch.Tensor
        self.register_buffer("rows_t", rows.T.contiguous(), persistent=False)
        self.register_buffer("cols_t", cols.T.contiguous(), persistent=False)
        self.sources = [(int(h), int(w)) for h, w in sources] if self.size is not None else []
        for index, (height, width) in enumerate(self.sources):
            # blur after upsampling: R @ (Uh @ m @ Uw.T) @ C.T = (R @ Uh) @ m @ (C @ Uw).T
            up_rows = rows.double() @ torch.from_numpy(align_corners_matrix(self.size[0], height))
            up_cols = cols.double() @ torch.from_numpy(align_corners_matrix(self.size[1], width))
            self.register_buffer(f"up_rows_t_{index}", up_rows.T.float().contiguous(), persistent=False)
            self.register_buffer(f"up_cols_t_{index}", up_cols.T.float().contiguous(), persistent=False)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Blur (B, C, H, W) maps: ``R @ X @ C.T`` at the built size, anomalib's convolution at any other."""
        if self.size is None or tuple(input_tensor.shape[-2:]) != self.size:
            return super().forward(input_tensor)
        blurred = input_tensor @ self.cols_t.to(input_tensor.dtype)  # along each row (the width)
        # along each column: on the transposed map, so that the map stays the first (activation) input of both
        # products and INT8 export recognises them as anomaly-map operations that stay in floating point
        return (blurred.transpose(-1, -2) @ self.rows_t.to(input_tensor.dtype)).transpose(-1, -2)

    def upsampled_mean(self, maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """The blur of the mean of ``maps`` upsampled to ``size`` (bilinear, ``align_corners=True``): (B, C, H, W).

        For maps of the ``sources`` sizes and ``size`` the built one: per map two products with the upsampling
        folded into the blur's matrices (the upsampled maps are never formed; on a CPU the upsampling of each map
        cost about as much as the blur's products, issue 27). Otherwise ``F.interpolate``, mean and the blur.
        """
        if self.size is None or tuple(size) != self.size or [tuple(m.shape[-2:]) for m in maps] != self.sources:
            upsampled = [F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=True) for m in maps]
            return self(torch.stack(upsampled).mean(dim=0))
        blurred = [
            (
                (m @ getattr(self, f"up_cols_t_{i}").to(m.dtype)).transpose(-1, -2)
                @ getattr(self, f"up_rows_t_{i}").to(m.dtype)
            ).transpose(-1, -2)
            for i, m in enumerate(maps)
        ]
        return torch.stack(blurred).mean(dim=0)
