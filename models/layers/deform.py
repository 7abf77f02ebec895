"""Deformable convolution v1 (no modulation mask): a differentiable torch version via
``grid_sample`` and a compiled inference kernel.

Offsets follow the torchvision/mmcv layout: ``offset`` has shape (B, G·2·kh·kw, H_out, W_out)
for G deform groups, with channel g·2·kh·kw + 2k = Δrow and g·2·kh·kw + 2k + 1 = Δcol for kernel
tap k (row-major over the kernel) of group g; group g moves the input channels
g·C/G … (g + 1)·C/G − 1. Tap k = (i, j) of output pixel (h, w) samples the input bilinearly at
(h·s − p + i·d + Δrow, w·s − p + j·d + Δcol); corners outside the image contribute zero.

Two implementations with the same output (tests/test_models.py):

- **Training** (any tensor that needs a gradient, neither float32 nor bfloat16 on the CPU,
  or under ``torch.compile``, which cannot trace the compiled kernel): one ``grid_sample`` over
  all taps, then one matmul. Its sampled tensor is (B, C·taps, H·W), and the matmul's
  broadcasting copies it once more, so at DeRefNet's sizes it runs near 12 GFLOP/s.
- **Inference on float32 or bfloat16 CPU tensors**: a numba kernel writes the bilinear
  samples straight into channels-last im2col rows (B·H·W, taps·C), a few samples at a time so
  the rows stay in cache, and one ``mm`` per chunk does the MACs
  (``benchmarks/bench_derefnet.json``). In bfloat16 (a model run in bf16,
  :mod:`models.precision`) the samples are taken in float32 and the ``mm`` runs in bf16.
  With one torch thread (the live unmixer's setting) the kernel runs serially on the calling
  thread: the parallel one starts numba's OpenMP team even when told to use one thread, and
  its idle threads spin; on the 2-core machine with the other core busy, that made every
  torch operation after the first deformable convolution about 15× slower (DeRefNet's frame
  features of 6 tracks: 40 ms before the first window, 640 ms after).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHUNK_FLOATS = 1 << 20  # im2col floats per chunk of the inference kernel (4 MiB in fp32)
#: dtypes of ``x`` the inference kernel takes (bfloat16: under bf16 autocast)
INFERENCE_DTYPES = (torch.float32, torch.bfloat16)


@numba.njit(fastmath=True, cache=True, inline="always")
def _sample_row(x, off, kw, pad, stride, dilation, cols, b, i):  # pragma: no cover - compiled
    """Bilinear samples of every tap of output row i of image b into channels-last im2col
    rows.

    x (B, H, W, C) channels-last input; off (B, H_out, W_out, G, taps, 2) channels-last offsets;
    cols (B, H_out, W_out, taps, C) output, overwritten. A corner outside the image gets
    weight 0 and reads a clamped pixel, so the channel loop has no branch and vectorises.
    """
    h, w, c = x.shape[1:]
    w_out, groups, taps = off.shape[2:5]
    cg = c // groups
    for j in range(w_out):
        for g in range(groups):
            for k in range(taps):
                r = i * stride - pad + (k // kw) * dilation + off[b, i, j, g, k, 0]
                q = j * stride - pad + (k % kw) * dilation + off[b, i, j, g, k, 1]
                r0, q0 = np.floor(r), np.floor(q)
                fr, fq = r - r0, q - q0
                r0i, q0i = int(r0), int(q0)
                r1i, q1i = r0i + 1, q0i + 1
                wr0 = (1 - fr) if 0 <= r0i < h else 0.0
                wr1 = fr if 0 <= r1i < h else 0.0
                wq0 = (1 - fq) if 0 <= q0i < w else 0.0
                wq1 = fq if 0 <= q1i < w else 0.0
                r0i, r1i = min(max(r0i, 0), h - 1), min(max(r1i, 0), h - 1)
                q0i, q1i = min(max(q0i, 0), w - 1), min(max(q1i, 0), w - 1)
                # float32 weights: a float64 weight would widen the channel loop's
                # products and halve its SIMD width (measured 12 % slower)
                w00, w01 = np.float32(wr0 * wq0), np.float32(wr0 * wq1)
                w10, w11 = np.float32(wr1 * wq0), np.float32(wr1 * wq1)
                lo = g * cg
                dst = cols[b, i, j, k, lo:lo + cg]
                s00 = x[b, r0i, q0i, lo:lo + cg]
                s01 = x[b, r0i, q1i, lo:lo + cg]
                s10 = x[b, r1i, q0i, lo:lo + cg]
                s11 = x[b, r1i, q1i, lo:lo + cg]
                for ch in range(cg):
                    dst[ch] = w00 * s00[ch] + w01 * s01[ch] + w10 * s10[ch] + w11 * s11[ch]


@numba.njit(fastmath=True, cache=True)
def _sample_columns(x, off, kw, pad, stride, dilation, cols):  # pragma: no cover - compiled
    """:func:`_sample_row` for every output row of every image, on the calling thread."""
    for b in range(x.shape[0]):
        for i in range(off.shape[1]):
            _sample_row(x, off, kw, pad, stride, dilation, cols, b, i)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _sample_columns_parallel(x, off, kw, pad, stride, dilation,
                             cols):  # pragma: no cover - compiled
    """:func:`_sample_columns` with the rows shared among numba's threads."""
    h_out = off.shape[1]
    for bh in numba.prange(x.shape[0] * h_out):
        _sample_row(x, off, kw, pad, stride, dilation, cols, bh // h_out, bh % h_out)


def _deform_conv2d_inference(x, offset, weight, padding, stride, dilation, deform_groups):
    """:func:`deform_conv2d` without autograd on CPU tensors; same arguments and result
    (returned in channels-last memory format). For bfloat16 ``x`` (bf16 autocast) the
    samples are taken in float32 and the matmul runs in bfloat16."""
    b, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    taps = kh * kw
    # both are views, not copies, when the tensors are channels-last float32 already
    x_cl = x.detach().float().permute(0, 2, 3, 1).contiguous().numpy()
    off = offset.detach().float().permute(0, 2, 3, 1).contiguous().view(
        b, h_out, w_out, deform_groups, taps, 2).numpy()
    w_mat = weight.detach().permute(0, 2, 3, 1).reshape(c_out, taps * c).T  # rows in (tap, c) order
    w_mat = w_mat.to(x.dtype)
    out = torch.empty(b, h_out, w_out, c_out, dtype=x.dtype)
    step = max(1, CHUNK_FLOATS // (h_out * w_out * taps * c))
    cols = torch.empty(min(step, b), h_out, w_out, taps, c, dtype=torch.float32)
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    sample = _sample_columns
    if threads > 1:
        numba.set_num_threads(threads)
        sample = _sample_columns_parallel
    for s in range(0, b, step):
        n = min(step, b - s)
        sample(x_cl[s:s + n], off[s:s + n], kw, padding, stride, dilation, cols[:n].numpy())
        torch.mm(cols[:n].view(-1, taps * c).to(x.dtype), w_mat, out=out[s:s + n].view(-1, c_out))
    return out.permute(0, 3, 1, 2)


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int = 1,
    stride: int = 1,
    dilation: int = 1,
    deform_groups: int = 1,
) -> torch.Tensor:
    """Deformable convolution.

    Parameters
    ----------
    x : tensor of shape (B, C_in, H, W)
    offset : tensor of shape (B, G·2·kh·kw, H_out, W_out), G = ``deform_groups``
    weight : tensor of shape (C_out, C_in, kh, kw)
    bias : tensor of shape (C_out,), optional
    deform_groups : int
        G, the number of channel groups with their own offsets (C_in divisible by G).

    Returns
    -------
    tensor of shape (B, C_out, H_out, W_out)
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, offset, weight, bias))
    if (not needs_grad and x.device.type == "cpu" and x.dtype in INFERENCE_DTYPES
            and not torch.compiler.is_compiling()):
        out = _deform_conv2d_inference(x, offset, weight, padding, stride, dilation,
                                       deform_groups)
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    b, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    taps = kh * kw
    g = deform_groups
    dev, dt = x.device, x.dtype
    ki, kj = torch.meshgrid(
        torch.arange(kh, device=dev, dtype=dt), torch.arange(kw, device=dev, dtype=dt),
        indexing="ij",
    )
    base_r = torch.arange(h_out, device=dev, dtype=dt) * stride - padding
    base_c = torch.arange(w_out, device=dev, dtype=dt) * stride - padding
    off = offset.view(b * g, taps, 2, h_out, w_out)
    rows = base_r.view(1, 1, h_out, 1) + (ki.reshape(1, taps, 1, 1) * dilation) + off[:, :, 0]
    cols = base_c.view(1, 1, 1, w_out) + (kj.reshape(1, taps, 1, 1) * dilation) + off[:, :, 1]
    # grid_sample wants (x = col, y = row) normalised to [-1, 1] with align_corners=True.
    gx = cols * (2.0 / max(w - 1, 1)) - 1.0
    gy = rows * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).view(b * g, taps * h_out, w_out, 2)
    # (B·G, C/G, taps·H_out, W_out): group g samples its own channels at its own offsets
    sampled = F.grid_sample(x.reshape(b * g, c // g, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=True)
    cols_mat = sampled.reshape(b, c * taps, h_out * w_out)
    out = torch.matmul(weight.reshape(c_out, c * taps), cols_mat).view(b, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class DeformConv2dPack(nn.Module):
    """3×3 deformable conv whose offsets come from a zero-initialised conv on ``offset_input``.

    Matches mmcv's ``DeformConv2dPack`` (DeRefNet, TDAN) and, when ``offset_input`` is another
    feature map, mmagic's ``AugmentedDeformConv2dPack`` (TDAN): no bias, no mask,
    ``deform_groups`` offset groups, weight uniform(±1/√(C_in·k²)); the offset conv has a bias
    and starts at zero, so the layer starts as a plain convolution.
    """

    def __init__(self, channels: int, offset_channels: int | None = None, kernel: int = 3,
                 deform_groups: int = 1):
        super().__init__()
        self.padding = kernel // 2
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel, kernel))
        bound = 1.0 / math.sqrt(channels * kernel * kernel)
        nn.init.uniform_(self.weight, -bound, bound)
        self.offset = nn.Conv2d(
            offset_channels or channels, deform_groups * 2 * kernel * kernel, kernel,
            padding=self.padding,
        )
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor, offset_input: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, self.offset(offset_input), self.weight, padding=self.padding,
                             deform_groups=self.deform_groups)
