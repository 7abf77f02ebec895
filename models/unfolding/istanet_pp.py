"""ISTA-Net++ (You et al. 2021) as in the reference (docs/reference.md §5.7).

Starts from Φᵀy (no Qinit) and runs 20 untied layers on x (N, 1, 33, 33), grey levels:

- a condition MLP 1→32→32→2L (LeakyReLU 0.01 after every layer, the last included), fed the
  constant 0.005 (the PSF σ/100), gives each layer its step λₖ and a constant map value cₖ;
- layer k: r = x − λₖΦᵀΦx + λₖΦᵀy, where Φx is a 33×33 convolution with stride 33 (Φ's rows
  as 121 kernels) and Φᵀ a 1×1 convolution 121→1089 followed by PixelShuffle(33); then
  x ← r + conv3×3 32→1(2 residual blocks(conv3×3 2→32([r, cₖ]))), the residual blocks being
  conv-LeakyReLU(0.1)-conv with biases.

MSE loss only. 760 220 parameters at 20 layers, as in Table VII (0.76 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import UnmixingModel
from models.layers.residual import ResidualBlock
from sim.geometry import HR, PATCH, SIGMA, WINDOW
from sim.phi import phi_matrix


class ConditionMlp(nn.Module):
    """1 → hidden → hidden → 2·layers, LeakyReLU after each; returns (λ (L,), c (L,))."""

    def __init__(self, layers: int, hidden: int = 32) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(1, hidden), nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 2 * layers)

    def forward(self, cond):
        """cond (1, 1) → steps (L,), map values (L,)."""
        out = F.leaky_relu(self.fc3(F.leaky_relu(self.fc2(F.leaky_relu(self.fc1(cond))))))
        return out[0].chunk(2)


class PPLayer(nn.Module):
    """Head conv 2→C on [x, c], two residual blocks, tail conv C→1, added to x."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.head = nn.Conv2d(2, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(channels, negative_slope=0.1)
                                      for _ in range(2)))
        self.tail = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, r, value):
        """r (N, 1, 33, 33), value c (scalar tensor) → (N, 1, 33, 33)."""
        x = torch.cat([r, value.expand_as(r)], dim=1)
        return r + self.tail(self.blocks(self.head(x)))


class IstaNetPP(UnmixingModel):
    """ISTA-Net++ on the middle frame; ``layers`` layers of ``channels`` features."""

    def __init__(self, layers: int = 20, channels: int = 32) -> None:
        super().__init__(phi_matrix())
        m = PATCH * PATCH
        self.register_buffer("phi_kernels", self.phi.view(m, 1, HR, HR), persistent=False)
        self.register_buffer("phit_kernels", self.phi.T.reshape(HR * HR, m, 1, 1).clone(),
                             persistent=False)
        self.register_buffer("cond", torch.tensor([[SIGMA / 100]]), persistent=False)
        self.condition = ConditionMlp(layers)
        self.layers = nn.ModuleList(PPLayer(channels) for _ in range(layers))
        self.config = {"layers": layers, "channels": channels}

    def phit(self, v):
        """Φᵀv as a map: v (N, 121, 1, 1) → (N, 1, 33, 33)."""
        return F.pixel_shuffle(F.conv2d(v, self.phit_kernels), HR)

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        """Maps (B, 33, 33) from windows (B, 5, 11, 11); no auxiliary losses."""
        self.check_input(windows, frame_index)
        y = windows[:, WINDOW // 2].reshape(-1, PATCH * PATCH, 1, 1)
        phity = x = self.phit(y)
        steps, values = self.condition(self.cond)
        for layer, step, value in zip(self.layers, steps, values, strict=True):
            phitphix = self.phit(F.conv2d(x, self.phi_kernels, stride=HR))
            x = layer(x - step * phitphix + step * phity, value)
        return x.view(-1, HR, HR), {}
