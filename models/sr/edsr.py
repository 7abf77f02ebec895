"""EDSR (docs/reference.md §5.3), BasicSR's version for one channel at ×3.

The LR middle frame → conv3×3 1→C → ``blocks`` residual blocks (conv-ReLU-conv + identity,
PyTorch default init) → conv3×3, plus a long skip from the first conv → conv3×3 C→9C,
PixelShuffle(3) → conv3×3 C→1 → the HR map. C = 32, 16 blocks: 389 025 learned parameters
(Table VII: 0.39 M, exact).

Reference quirk (§8 #10): the reference multiplies the input by ``img_range`` = 255 and divides
the output by 255, although the input is already in grey levels 0..255. The default drops
it; ``faithful=True`` keeps it.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers.residual import ResidualBlockNoBN
from models.sr.blocks import SingleFrameSR
from sim.geometry import RATIO


class EDSR(SingleFrameSR):
    """See the module docstring."""

    def __init__(self, channels: int = 32, blocks: int = 16, faithful: bool = False) -> None:
        super().__init__()
        self.img_range = 255.0 if faithful else 1.0
        self.conv_first = nn.Conv2d(1, channels, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(channels) for _ in range(blocks)))
        for conv in self.body.modules():
            if isinstance(conv, nn.Conv2d):
                conv.reset_parameters()  # BasicSR's EDSR uses PyTorch's default init
        self.conv_after_body = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(channels, RATIO * RATIO * channels, 3, padding=1),
                                      nn.PixelShuffle(RATIO))
        self.conv_last = nn.Conv2d(channels, 1, 3, padding=1)
        self.config = {"channels": channels, "blocks": blocks, "faithful": faithful}

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(lr * self.img_range)
        x = x + self.conv_after_body(self.body(x))
        return self.conv_last(self.upsample(x)) / self.img_range
