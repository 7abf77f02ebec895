"""USRNet's prior module: a 4-level residual U-Net (Zhang et al. 2020, KAIR's ``ResUNet``).

As the reference builds it for 33×33 maps (docs/reference.md §5.7): no biases anywhere;
head conv3×3 in→16; three levels down, each 2 residual blocks (conv-ReLU-conv + identity) then
a 2×2 stride-2 conv (33 → 16 → 8 → 4 px, channels 16 → 32 → 64 → 128); 2 residual blocks at
the bottom; three levels up, each a 2×2 stride-2 transposed conv then 2 residual blocks, with
additive skips; the top level (32 px) is resized bilinearly to 33 before the last skip; tail
conv3×3 16→out.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from models.layers.residual import ResidualBlock


def _res_blocks(channels: int, n: int) -> list[nn.Module]:
    return [ResidualBlock(channels, bias=False) for _ in range(n)]


class ResUNet(nn.Module):
    """Residual U-Net: (N, in_channels, H, W) → (N, out_channels, H, W).

    Parameters
    ----------
    in_channels, out_channels : int
        Input (map + noise-level map) and output channels.
    channels : sequence of 4 ints
        Features per level, top to bottom.
    blocks : int
        Residual blocks per level.
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1,
                 channels=(16, 32, 64, 128), blocks: int = 2) -> None:
        super().__init__()
        c = list(channels)
        self.head = nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            nn.Sequential(*_res_blocks(c[i], blocks),
                          nn.Conv2d(c[i], c[i + 1], 2, stride=2, bias=False))
            for i in range(3)
        )
        self.body = nn.Sequential(*_res_blocks(c[3], blocks))
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2, bias=False),
                          *_res_blocks(c[i], blocks))
            for i in reversed(range(3))
        )
        self.tail = nn.Conv2d(c[0], out_channels, 3, padding=1, bias=False)

    def forward(self, x):
        skips = [self.head(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        x = self.body(skips[-1])
        for up, skip in zip(self.up, reversed(skips[1:]), strict=True):
            x = up(x + skip)
        x = F.interpolate(x, size=skips[0].shape[-2:], mode="bilinear", align_corners=False)
        return self.tail(x + skips[0])
