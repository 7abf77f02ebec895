"""Deformable convolution v1 (no modulation mask) in pure torch, via ``grid_sample``.

Offsets follow the torchvision/mmcv layout: ``offset`` has shape (B, G·2·kh·kw, H_out, W_out)
for G deform groups, with channel g·2·kh·kw + 2k = Δrow and g·2·kh·kw + 2k + 1 = Δcol for kernel
tap k (row-major over the kernel) of group g; group g moves the input channels
g·C/G … (g + 1)·C/G − 1. Tap k = (i, j) of output pixel (h, w) samples the input bilinearly at
(h·s − p + i·d + Δrow, w·s − p + j·d + Δcol); corners outside the image contribute zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
