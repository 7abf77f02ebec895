"""DBPN, deep back-projection network, as the reference builds it (docs/reference.md §5.3).

The LR middle frame → conv3×3 1→128 + PReLU → conv1×1 128→C + PReLU → ``projections`` ×
(up-projection, down-projection) → one more up-projection → conv1×1 C→1 → the HR map.
The units are chained one after the other (the reference's "DBPN" has no dense concatenation
between them). Every (de)convolution of a projection unit is kernel 7, stride 3, padding 2
(11 ↔ 33) followed by a one-parameter PReLU. C = 32 and 6 projection pairs: 1 963 594 learned
parameters (Table VII: 1.96 M).
"""

from __future__ import annotations

import torch
from torch import nn

from models.sr.blocks import SingleFrameSR, conv_prelu
from sim.geometry import RATIO

#: kernel, stride and padding of the projection (de)convolutions at ×3
PROJECTION = {"kernel": 7, "stride": RATIO, "padding": 2}


class UpProjection(nn.Module):
    """(N, C, 11, 11) -> (N, C, 33, 33): h₀ = up(x), h₁ = up'(down(h₀) − x), out h₀ + h₁."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up1 = conv_prelu(channels, channels, transposed=True, **PROJECTION)
        self.down = conv_prelu(channels, channels, **PROJECTION)
        self.up2 = conv_prelu(channels, channels, transposed=True, **PROJECTION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.up1(x)
        return h0 + self.up2(self.down(h0) - x)


class DownProjection(nn.Module):
    """(N, C, 33, 33) -> (N, C, 11, 11): l₀ = down(x), l₁ = down'(up(l₀) − x), out l₀ + l₁."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.down1 = conv_prelu(channels, channels, **PROJECTION)
        self.up = conv_prelu(channels, channels, transposed=True, **PROJECTION)
        self.down2 = conv_prelu(channels, channels, **PROJECTION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l0 = self.down1(x)
        return l0 + self.down2(self.up(l0) - x)


class DBPN(SingleFrameSR):
    """See the module docstring."""

    def __init__(self, channels: int = 32, projections: int = 6) -> None:
        super().__init__()
        units: list[nn.Module] = [conv_prelu(1, 128, 3), conv_prelu(128, channels, 1)]
        for _ in range(projections):
            units += [UpProjection(channels), DownProjection(channels)]
        units += [UpProjection(channels), nn.Conv2d(channels, 1, 1)]
        self.net = nn.Sequential(*units)
        self.config = {"channels": channels, "projections": projections}

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr)
