"""FastUnmixer: a multi-frame CNN at LR resolution with a ×3 pixel-shuffle head.

Built for the live pipeline on a CPU (DeRefNet costs ~1 GMAC per window; this ~60 MMAC).
The 5 frames of a window enter as 5 channels at 11×11 (early fusion; the targets move
< 0.05 px per frame, so no alignment is needed at this scale), pass a stack of residual
blocks, and a conv → PixelShuffle(3) → conv head produces the 33×33 map:

windows (B, 5, 11, 11) / scale → conv3×3 5→C → n × [conv-ReLU-conv + skip] →
conv3×3 C→9·C_hr → PixelShuffle(3) → ReLU → conv3×3 C_hr→1 → × scale → maps (B, 33, 33).

With ``grid_head`` a :class:`~models.layers.grid_head.GridHead` reads the HR features and the
map; ``set_output("grid")`` makes :meth:`forward` return its maps instead (the ``grid`` mode's
output, trained on the snapped truth; the points extractor always reads the splat map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import UnmixingModel
from models.layers.grid_head import GridHead
from models.layers.residual import ResidualBlockNoBN
from sim.geometry import HR, RATIO, WINDOW
from sim.phi import phi_matrix


class FastUnmixer(UnmixingModel):
    """See the module docstring. ``scale`` (grey levels) normalises inputs and outputs."""

    def __init__(self, channels: int = 64, blocks: int = 6, hr_channels: int = 16,
                 scale: float = 100.0, grid_head: bool = False) -> None:
        super().__init__(phi_matrix())
        self.scale = scale
        self.head = nn.Conv2d(WINDOW, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlockNoBN(channels) for _ in range(blocks)))
        self.up = nn.Conv2d(channels, hr_channels * RATIO * RATIO, 3, padding=1)
        self.shuffle = nn.PixelShuffle(RATIO)
        self.out = nn.Conv2d(hr_channels, 1, 3, padding=1)
        self.grid_head = GridHead(hr_channels, scale=scale) if grid_head else None
        self.config = {"channels": channels, "blocks": blocks, "hr_channels": hr_channels,
                       "scale": scale, "grid_head": grid_head}

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        self.check_input(windows, frame_index)
        x = F.relu(self.head(windows / self.scale))
        x = self.blocks(x)
        x = F.relu(self.shuffle(self.up(x)))
        maps = self.out(x).view(-1, HR, HR) * self.scale
        if self.output == "grid":
            return self.grid_head(x, maps, windows, self.phi), {}
        return maps, {}

