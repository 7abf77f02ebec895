"""GMFN, gated multiple feedback network, as the reference builds it (docs/reference.md §5.3).

The LR middle frame → conv3×3 1→4C + PReLU → conv1×1 4C→C + PReLU = f. Then ``steps`` time
steps of the same body, ``blocks`` residual dense blocks (8 conv3×3 + PReLU, growth C,
1×1 fusion, residual × 0.2). From the second step on, the gated feedback module refines the
input of every block: s = select(concat of all block outputs of the previous step) (conv1×1
blocks·C→C + PReLU, the same for every block) and the block input becomes
refine(concat(s, input)) (conv1×1 2C→C + PReLU). Each step's output is
bilinear ×3 (LR) + conv3×3 C→1 (deconv 7/3/2 C→C + PReLU (last block output)).
C = 32, 8 blocks, 4 steps: 2 796 518 learned parameters (Table VII: 2.80 M; 11.2 MB in fp32,
too large to ship as weights).

Reference quirk (§8 #10): the reference concatenates the 4 step outputs along the batch axis
and keeps rows 2..17, i.e. it trains and scores the **first** step only. ``faithful=True``
reproduces that (and computes only the first step); the default outputs the last step.
The selection conv is evaluated once per step rather than once per block (same values, 0.42 G
fewer MACs per 20 frames: 26.73 G against Table VII's 27.53 G, the other 0.39 G unexplained).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.sr.blocks import ResidualDenseBlock, SingleFrameSR, conv_prelu
from sim.geometry import RATIO

#: conv layers per residual dense block (the reference's ``ResidualDenseBlock_8C``)
DENSE_LAYERS = 8


class GMFN(SingleFrameSR):
    """See the module docstring."""

    def __init__(self, channels: int = 32, blocks: int = 8, steps: int = 4,
                 faithful: bool = False) -> None:
        super().__init__()
        c = channels
        self.steps = 1 if faithful else steps
        self.conv_in = conv_prelu(1, 4 * c, 3)
        self.feat_in = conv_prelu(4 * c, c, 1)
        self.blocks = nn.ModuleList(
            ResidualDenseBlock(c, c, DENSE_LAYERS, lambda: nn.PReLU(init=0.2), res_scale=0.2)
            for _ in range(blocks)
        )
        self.select = conv_prelu(blocks * c, c, 1)
        self.refine = conv_prelu(2 * c, c, 1)
        self.deconv = conv_prelu(c, c, 7, stride=RATIO, padding=2, transposed=True)
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)
        self.config = {"channels": channels, "blocks": blocks, "steps": steps,
                       "faithful": faithful}

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(lr, scale_factor=RATIO, mode="bilinear", align_corners=False)
        feat = self.feat_in(self.conv_in(lr))
        outs: list[torch.Tensor] = []
        for _ in range(self.steps):
            selected = self.select(torch.cat(outs, dim=1)) if outs else None
            x, outs = feat, []
            for block in self.blocks:
                if selected is not None:
                    x = self.refine(torch.cat([selected, x], dim=1))
                x = block(x)
                outs.append(x)
        return up + self.conv_out(self.deconv(outs[-1]))
