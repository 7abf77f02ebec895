"""The ISTA-Net+ block (Zhang & Ghanem 2018), shared by ISTA-Net+ and FISTA-Net.

On the gradient-step estimate r (N, 1, 33, 33) (grey levels):

- x_D = D(r), D = conv3×3 1→C;
- F = conv3×3 C→C, ReLU, conv3×3 C→C; z = soft(F(x_D), θ);
- F̃ = conv3×3 C→C, ReLU, conv3×3 C→C; G = conv3×3 C→1;
- output r + G(F̃(z)) (the residual form), and the symmetry residual s = F̃(F(x_D)) − x_D.

Kernels are Xavier-normal, biases (FISTA-Net only) zero.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from models.layers.shrinkage import soft_threshold


class PlusBlock(nn.Module):
    """See the module docstring. ``channels`` = C; ``bias`` adds biases to every conv."""

    def __init__(self, channels: int = 32, bias: bool = False) -> None:
        super().__init__()

        def conv(c_in, c_out):
            layer = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
            nn.init.xavier_normal_(layer.weight)
            if bias:
                nn.init.zeros_(layer.bias)
            return layer

        self.conv_d = conv(1, channels)
        self.forward1, self.forward2 = conv(channels, channels), conv(channels, channels)
        self.backward1, self.backward2 = conv(channels, channels), conv(channels, channels)
        self.conv_g = conv(channels, 1)

    def transform(self, x):
        """F: (N, C, 33, 33) → (N, C, 33, 33)."""
        return self.forward2(F.relu(self.forward1(x)))

    def inverse(self, x):
        """F̃: (N, C, 33, 33) → (N, C, 33, 33)."""
        return self.backward2(F.relu(self.backward1(x)))

    def forward(self, r, threshold, with_symmetry: bool):
        """r (N, 1, 33, 33), threshold θ (scalar tensor).

        Returns the new estimate r + G(F̃(z)) (N, 1, 33, 33), the thresholded features z
        (N, C, 33, 33), and mean(s²) (None unless ``with_symmetry``).
        """
        x_d = self.conv_d(r)
        f = self.transform(x_d)
        z = soft_threshold(f, threshold)
        out = r + self.conv_g(self.inverse(z))
        sym = (self.inverse(f) - x_d).pow(2).mean() if with_symmetry else None
        return out, z, sym
