"""Blocks shared by the super-resolution baselines (docs/reference.md §5.3–§5.4).

- :class:`SingleFrameSR`: the :class:`~models.base.UnmixingModel` of every single-frame method; it
  upscales the middle frame of each window.
- :func:`kaiming_init_`, :func:`conv_prelu`: the initialisation and PReLU conv of the
  reference's building blocks.
- :class:`ResidualDenseBlock`: the dense block of RDN, GMFN and ESRGAN (they differ only in
  depth, activation, fusion kernel, residual scale and initialisation).
- :class:`RRDBNet`: the ESRGAN/BSRGAN generator at ×3.

Every block takes and returns raw grey levels or features; nothing is normalised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.base import UnmixingModel
from sim.geometry import HR, RATIO, WINDOW
from sim.phi import phi_matrix


class SingleFrameSR(UnmixingModel):
    """A single-frame SR network as an unmixer: maps = upscale(windows[:, 2]).

    Subclasses build their network and implement :meth:`upscale`; the other four frames of a
    window are ignored.
    """

    def __init__(self) -> None:
        super().__init__(phi_matrix())

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        """(N, 1, 11, 11) grey levels -> (N, 1, 33, 33) grey levels."""
        raise NotImplementedError

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        self.check_input(windows, frame_index)
        maps = self.upscale(windows[:, WINDOW // 2, None])
        return maps.view(-1, HR, HR), {}


def kaiming_init_(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """Kaiming-normal (fan-in) weights × ``scale`` and zero biases for every conv in ``module``.

    The ``default_init_weights`` of mmagic/BasicSR; returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            m.weight.data.mul_(scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def conv_prelu(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int | None = None,
               transposed: bool = False) -> nn.Sequential:
    """Conv (or transposed conv) with bias followed by a one-parameter PReLU (slope 0.2).

    The ``ConvBlock``/``DeconvBlock`` of the reference's GMFN and DBPN (no normalisation);
    ``padding`` defaults to "same" (kernel // 2).
    """
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    pad = kernel // 2 if padding is None else padding
    return nn.Sequential(conv(c_in, c_out, kernel, stride, pad), nn.PReLU(init=0.2))


class ResidualDenseBlock(nn.Module):
    """Residual dense block.

    ``layers`` 3×3 convs, each followed by ``act()`` and each reading the concatenation of the
    input and all previous outputs (``growth`` channels each); a fusion conv
    (``fuse_kernel``, no activation) maps the C + layers·growth channels back to C; the output
    is x + ``res_scale`` · fused. Shapes (N, C, H, W) -> (N, C, H, W).

    RDN: 8 layers, ReLU, 1×1 fusion, scale 1. GMFN: 8 layers, PReLU, 1×1 fusion, scale 0.2.
    ESRGAN: 4 layers, LeakyReLU(0.2), 3×3 fusion, scale 0.2, Kaiming × 0.1 init
    (``init_scale``; None keeps PyTorch's default init).
    """

    def __init__(self, channels: int, growth: int, layers: int, act: Callable[[], nn.Module],
                 fuse_kernel: int = 1, res_scale: float = 1.0,
                 init_scale: float | None = None) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels + i * growth, growth, 3, padding=1), act())
            for i in range(layers)
        )
        self.fuse = nn.Conv2d(channels + layers * growth, channels, fuse_kernel,
                              padding=fuse_kernel // 2)
        if init_scale is not None:
            kaiming_init_(self, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(conv(torch.cat(feats, dim=1)))
        return x + self.res_scale * self.fuse(torch.cat(feats, dim=1))


class RRDB(nn.Module):
    """Residual in residual dense block: 3 ESRGAN dense blocks, x + 0.2 · blocks(x)."""

    def __init__(self, channels: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(
            ResidualDenseBlock(channels, growth, 4, lambda: nn.LeakyReLU(0.2), fuse_kernel=3,
                               res_scale=0.2, init_scale=0.1)
            for _ in range(3)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.blocks(x)


class RRDBNet(nn.Module):
    """ESRGAN generator (mmagic ``RRDBNet``) for one channel at ×3.

    conv3×3 1→C, ``blocks`` RRDBs + conv3×3 with a long skip, nearest ×3 upsampling,
    conv3×3 + LeakyReLU twice, conv3×3 + LeakyReLU, conv3×3 C→1. Shapes
    (N, 1, 11, 11) -> (N, 1, 33, 33), grey levels. All convs outside the RRDBs start at
    Kaiming × 0.1.

    mmagic's RRDBNet supports ×1, ×2 and ×4 only (two nearest ×2 steps, each followed by a
    conv), so the reference configs cannot build it at ×3 (docs/reference.md §5.4). We
    upsample once by 3 and keep both upsampling convs (both at 33×33), which keeps the
    parameter count of the ×4 network that Table VII's figure is made of.
    """

    def __init__(self, channels: int = 64, blocks: int = 23, growth: int = 32) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(1, channels, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_up1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_up2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_hr = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, 1, 3, padding=1)
        for conv in (self.conv_first, self.conv_body, self.conv_up1, self.conv_up2,
                     self.conv_hr, self.conv_last):
            kaiming_init_(conv, 0.1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(lr)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.interpolate(feat, scale_factor=RATIO, mode="nearest")
        feat = F.leaky_relu(self.conv_up1(feat), 0.2)
        feat = F.leaky_relu(self.conv_up2(feat), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
