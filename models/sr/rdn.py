"""RDN, residual dense network (docs/reference.md §5.3).

The LR middle frame → conv3×3 1→G0 (f₋₁) → conv3×3 → ``blocks`` residual dense blocks of
``layers`` conv3×3 + ReLU (growth G each, 1×1 local fusion, identity skip) → global fusion
(1×1 over the concatenated block outputs, then conv3×3) + f₋₁ → conv3×3 G0→9G,
PixelShuffle(3), conv3×3 G→1 → the HR map. G0 = G = 64, 16 blocks × 8 layers:
22 305 729 learned parameters (Table VII: 22.31 M, exact; 89 MB in fp32, too large to ship
as weights). PyTorch default init.
"""

from __future__ import annotations

import torch
from torch import nn

from models.sr.blocks import ResidualDenseBlock, SingleFrameSR
from sim.geometry import RATIO


class RDN(SingleFrameSR):
    """See the module docstring; ``channels`` is both G0 and G, as in the reference."""

    def __init__(self, channels: int = 64, blocks: int = 16, layers: int = 8) -> None:
        super().__init__()
        c = channels
        self.sfe1 = nn.Conv2d(1, c, 3, padding=1)
        self.sfe2 = nn.Conv2d(c, c, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualDenseBlock(c, c, layers, nn.ReLU)
                                    for _ in range(blocks))
        self.gff = nn.Sequential(nn.Conv2d(blocks * c, c, 1), nn.Conv2d(c, c, 3, padding=1))
        self.up = nn.Sequential(nn.Conv2d(c, RATIO * RATIO * c, 3, padding=1),
                                nn.PixelShuffle(RATIO), nn.Conv2d(c, 1, 3, padding=1))
        self.config = {"channels": channels, "blocks": blocks, "layers": layers}

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        f_1 = self.sfe1(lr)
        x = self.sfe2(f_1)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return self.up(self.gff(torch.cat(outs, dim=1)) + f_1)
