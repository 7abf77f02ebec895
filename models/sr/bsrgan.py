"""BSRGAN: RRDBNet generator with a spectral-norm U-Net discriminator (docs/reference.md §5.4).

The generator is ESRGAN's (:class:`~models.sr.esrgan.ESRGAN`) with 16 RRDBs instead of 23:
11 659 713 learned parameters (46.6 MB in fp32, too large to ship as weights). Table VII's
36.06 M counts the training set-up: generator + :class:`~models.sr.adversarial.UNetDiscriminator`
(4 375 745) + VGG19 up to conv5_4 (20 024 384) = 36.06 M. Only the generator is the unmixer.

The reference's BSRGAN model class computes exactly ESRGAN's relativistic average GAN loss,
so ``relativistic`` defaults to True here as well. As for the other GANs, no VGG19 perceptual
loss (no ImageNet weights here): L1 pixel + adversarial loss (``configs/models/bsrgan.yaml``).
"""

from __future__ import annotations

from models.sr.adversarial import Critic, UNetDiscriminator
from models.sr.esrgan import ESRGAN


class BSRGAN(ESRGAN):
    """See the module docstring."""

    def __init__(self, channels: int = 64, blocks: int = 16, growth: int = 32,
                 disc_channels: int = 64, relativistic: bool = True) -> None:
        super().__init__(channels, blocks, growth, disc_channels, relativistic)

    def make_discriminator(self) -> Critic:
        return Critic(UNetDiscriminator(self.config["disc_channels"]),
                      self.config["relativistic"])
