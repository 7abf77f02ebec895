"""ESRGAN: RRDBNet generator, VGG-style discriminator, relativistic GAN (docs/reference.md §5.4).

Generator: :class:`~models.sr.blocks.RRDBNet` (C = 64, 23 RRDBs, growth 32, ×3 as explained
there) on the LR middle frame: 16 695 681 learned parameters (66.8 MB in fp32, too large
to ship as weights). Table VII's 50.45 M counts the
training set-up: generator + :class:`~models.sr.adversarial.VGGDiscriminator` (13 730 249)
+ VGG19 up to conv5_4 (20 024 384) = 50.45 M. Only the generator is the unmixer; the
discriminator comes from :meth:`make_discriminator`.

The reference initialises the generator from mmediting's ESRGAN-PSNR ×4 RGB checkpoint,
whose shapes do not fit a 1-channel ×3 network, and its perceptual loss needs ImageNet VGG19
weights; neither can be used here. We start from the standard initialisation and train with
L1 pixel + relativistic average adversarial loss only (``configs/models/esrgan.yaml``).
"""

from __future__ import annotations

import torch

from models.sr.adversarial import Critic, VGGDiscriminator
from models.sr.blocks import RRDBNet, SingleFrameSR


class ESRGAN(SingleFrameSR):
    """See the module docstring. ``disc_channels``/``relativistic`` configure the critic."""

    def __init__(self, channels: int = 64, blocks: int = 23, growth: int = 32,
                 disc_channels: int = 64, relativistic: bool = True) -> None:
        super().__init__()
        self.generator = RRDBNet(channels, blocks, growth)
        self.config = {"channels": channels, "blocks": blocks, "growth": growth,
                       "disc_channels": disc_channels, "relativistic": relativistic}

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        return self.generator(lr)

    def make_discriminator(self) -> Critic:
        return Critic(VGGDiscriminator(self.config["disc_channels"]),
                      self.config["relativistic"])
