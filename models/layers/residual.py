"""Residual blocks without batch normalisation, shared by several models."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """conv3×3 → (leaky) ReLU → conv3×3 plus identity, PyTorch's default initialisation.

    Parameters
    ----------
    channels : int
        Input = output channels.
    bias : bool
        Whether the convolutions have a bias.
    negative_slope : float
        Slope of the activation for negative inputs (0 = ReLU).
    """

    def __init__(self, channels: int = 32, bias: bool = True, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)

    def forward(self, x):
        return x + self.conv2(F.leaky_relu(self.conv1(x), self.negative_slope, inplace=True))


class ResidualBlockNoBN(ResidualBlock):
    """conv3×3 → ReLU → conv3×3 plus identity; convs Kaiming-initialised ×0.1 (mmagic)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__(channels)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
