"""SRGAN: MSRResNet generator with a VGG-style discriminator (docs/reference.md §5.4).

Generator (mmagic ``MSRResNet`` at ×3, one channel): the LR middle frame → conv3×3 1→C +
LeakyReLU(0.1) → ``blocks`` residual blocks (conv-ReLU-conv + identity) → conv3×3 C→9C,
PixelShuffle(3) → conv3×3 + LeakyReLU(0.1) → conv3×3 C→1, plus the bilinear ×3 upsampling
of the LR frame → the HR map. C = 64, 16 blocks: 1 552 193 learned parameters.

Table VII's 35.31 M counts the whole training set-up: this generator, the discriminator
(:class:`~models.sr.adversarial.VGGDiscriminator`, 13 730 249 parameters at C = 64) and the
VGG19 of the perceptual loss up to conv5_4 (20 024 384); 1 552 193 + 13 730 249 + 20 024 384
= 35.31 M. Only the generator is the unmixer; the discriminator comes from
:meth:`make_discriminator` and lives in the training harness.

As released the reference cannot run (it feeds (20, 121) vectors to the generator and
1-channel maps to an RGB VGG19, §8 #11); this one reshapes to images. Its perceptual loss
needs ImageNet VGG19 weights, which cannot be obtained here: it trains with L1 pixel +
standard (non-relativistic) adversarial loss only (``configs/models/srgan.yaml``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.residual import ResidualBlockNoBN
from models.sr.adversarial import Critic, VGGDiscriminator
from models.sr.blocks import SingleFrameSR, kaiming_init_
from sim.geometry import RATIO


class SRGAN(SingleFrameSR):
    """See the module docstring. ``disc_channels``/``relativistic`` configure the critic."""

    def __init__(self, channels: int = 64, blocks: int = 16, disc_channels: int = 64,
                 relativistic: bool = False) -> None:
        super().__init__()
        self.conv_first = kaiming_init_(nn.Conv2d(1, channels, 3, padding=1), 0.1)
        self.trunk = nn.Sequential(*(ResidualBlockNoBN(channels) for _ in range(blocks)))
        self.upsample = nn.Sequential(
            kaiming_init_(nn.Conv2d(channels, RATIO * RATIO * channels, 3, padding=1)),
            nn.PixelShuffle(RATIO),
        )
        self.conv_hr = kaiming_init_(nn.Conv2d(channels, channels, 3, padding=1), 0.1)
        self.conv_last = kaiming_init_(nn.Conv2d(channels, 1, 3, padding=1), 0.1)
        self.config = {"channels": channels, "blocks": blocks, "disc_channels": disc_channels,
                       "relativistic": relativistic}

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        x = self.upsample(self.trunk(F.leaky_relu(self.conv_first(lr), 0.1)))
        x = self.conv_last(F.leaky_relu(self.conv_hr(x), 0.1))
        return x + F.interpolate(lr, scale_factor=RATIO, mode="bilinear", align_corners=False)

    def make_discriminator(self) -> Critic:
        return Critic(VGGDiscriminator(self.config["disc_channels"]),
                      self.config["relativistic"])
