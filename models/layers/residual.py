"""Residual block without batch normalisation (EDSR/mmagic style), shared by several models."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class ResidualBlockNoBN(nn.Module):
    """conv3×3 → ReLU → conv3×3 plus identity; convs Kaiming-initialised ×0.1 (mmagic)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))
