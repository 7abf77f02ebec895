"""ESPCN (docs/reference.md §5.3).

The LR middle frame → conv5×5 1→64, ReLU → conv3×3 64→32, ReLU → conv3×3 32→9 →
PixelShuffle(3) → the HR map in grey levels. 22 729 learned parameters: Table VII prints
"54.75 M" here because its Params and FLOPs columns are swapped for ESPCN (§6.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.sr.blocks import SingleFrameSR
from sim.geometry import RATIO


class ESPCN(SingleFrameSR):
    """See the module docstring (no options: the network is already tiny)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, RATIO * RATIO, 3, padding=1)
        self.config = {}

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(lr))))
        return F.pixel_shuffle(self.conv3(x), RATIO)
