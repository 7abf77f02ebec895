"""3×3 convolutions with few output channels, computed faster on the CPU in inference.

oneDNN's direct convolution spends about as long on a 3×3 conv with 1 or 2 output channels
as on one with 16: at DeRefNet's live sizes (33×33 maps, 32 input channels, channels-last)
32→1 runs near 12 GFLOP/s against about 200 for 32→32, and 32→18 (the deformable convs'
offsets) takes as long as 32→32. Here the few channels are computed as one matmul of the
pixels (B·H·W, C) with the kernel's taps (C, 9·O), its columns padded to a multiple of 16
(a product 9 columns wide runs about 4× slower than one 16 wide), followed by nine shifted
adds of the tap planes: out[o, y, x] = Σ_(i,j) taps[(i,j), o][y + i − 1, x + j − 1]
(zero outside the map). Measured at B = 6 / 24: 32→1 in 183 / 499 µs against 302 / 1,120.
Splitting 32→18 into oneDNN's 16 channels and 2 such channels was no faster (2.39 against
2.25 ms at B = 24), so the offsets stay with oneDNN.

Same values as ``F.conv2d`` up to float32 rounding. Used for float32 CPU tensors without
autograd; anything else (training, CUDA, bfloat16: there oneDNN's conv was as fast, 166
against 169 windows/s in DeRefNet's live steps) takes ``F.conv2d``, and so does a call
under a dispatch mode such as torch's FLOP counter, which then counts the convolution's MACs
rather than the padded matmul's.
``benchmarks/bench_derefnet*.json`` hold the speed-up in DeRefNet's live steps.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

#: Most output channels computed by the matmul-and-shift path.
NARROW = 2
_LANES = 16
_enabled = True


@contextmanager
def conv2d_only():
    """Within the block every :func:`conv3x3` call takes ``F.conv2d`` (the benchmark's
    side-by-side comparison)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def _uses_taps(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv3x3` takes the matmul-and-shift path for these operands."""
    return (_enabled and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.shape[-2:] == (3, 3) and weight.shape[0] <= NARROW
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.compiler.is_compiling()
            and _get_current_dispatch_mode() is None)


def _taps_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """3×3 conv, padding 1, of x (B, C, H, W) with weight (O, C, 3, 3), O small, as one matmul
    and nine shifted adds. Returns (B, O, H, W)."""
    b, c, h, w = x.shape
    o = weight.shape[0]
    width = -(-9 * o // _LANES) * _LANES
    taps = x.new_zeros(c, width)
    taps[:, :9 * o] = weight.permute(1, 2, 3, 0).reshape(c, 9 * o)  # column (3i + j)·O + o
    planes = (x.permute(0, 2, 3, 1).reshape(-1, c) @ taps)[:, :9 * o]  # (B·H·W, 9·O)
    planes = planes.T.reshape(9, o, b, h, w)
    padded = F.pad(planes, (1, 1, 1, 1))  # (9, O, B, H + 2, W + 2)
    out = padded[0, :, :, :h, :w].clone()
    for k in range(1, 9):
        i, j = divmod(k, 3)
        out += padded[k, :, :, i:i + h, j:j + w]
    if bias is not None:
        out += bias.view(o, 1, 1, 1)
    return out.permute(1, 0, 2, 3)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """``F.conv2d(x, weight, bias, padding=1)`` for 3×3 kernels; see the module docstring.

    x: (B, C, H, W); weight: (O, C, 3, 3); bias: (O,) or None. Returns (B, O, H, W).
    """
    if _uses_taps(x, weight):
        return _taps_conv(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)


class NarrowConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 3, padding=1)`` computed by :func:`conv3x3`
    (same parameters and state-dict keys)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3x3(x, self.weight, self.bias)
