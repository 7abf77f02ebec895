"""Discriminators and GAN losses of the GAN baselines (docs/reference.md §5.4).

A :class:`Critic` is what :meth:`models.base.UnmixingModel.make_discriminator` returns: a
discriminator network together with its GAN loss. The training harness owns it and its
optimiser, so it is part of training only, never of a model's inference or weights.

The reference's VGG19 perceptual loss needs ImageNet weights that cannot be obtained here, so
the GANs train with pixel + adversarial losses only (the YAML recipes say so).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sim.geometry import HR


class VGGDiscriminator(nn.Module):
    """VGG-style discriminator with batch norm for 33×33 maps (mmagic ``ModifiedVGG``).

    Five stages of conv3×3 + conv4×4 stride 2 (33 → 16 → 8 → 4 → 2 → 1) with
    C, 2C, 4C, 8C, 8C channels, each conv followed by batch norm (except the first, which has
    a bias instead) and LeakyReLU(0.2); then Linear 8C→100, LeakyReLU, Linear 100→1.
    Shapes (N, 1, 33, 33) -> (N, 1) logits.
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        widths = [channels, 2 * channels, 4 * channels, 8 * channels, 8 * channels]
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        c_in = channels
        for i, c in enumerate(widths):
            if i > 0:
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.LeakyReLU(0.2)]
            layers += [nn.Conv2d(c, c, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.LeakyReLU(0.2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in, 100), nn.LeakyReLU(0.2),
                                  nn.Linear(100, 1))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(maps))


class UNetDiscriminator(nn.Module):
    """U-Net discriminator with spectral normalisation (BSRGAN/Real-ESRGAN) for 33×33 maps.

    conv3×3 1→C; three spectral-normalised conv4×4 stride 2 (C→2C→4C→8C; 33 → 16 → 8 → 4);
    three bilinear ×2 + spectral-normalised conv3×3 steps back (8C→4C→2C→C) with skip
    additions, the last one resized to 33; two more spectral-normalised conv3×3; conv3×3 C→1.
    LeakyReLU(0.2) after every conv but the last. Shapes (N, 1, 33, 33) -> (N, 1, 33, 33)
    per-cell logits.
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels

        def sn(c_in, c_out, kernel, stride=1):
            return spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride, 1, bias=False))

        self.conv0 = nn.Conv2d(1, c, 3, padding=1)
        self.down = nn.ModuleList([sn(c, 2 * c, 4, 2), sn(2 * c, 4 * c, 4, 2),
                                   sn(4 * c, 8 * c, 4, 2)])
        self.up = nn.ModuleList([sn(8 * c, 4 * c, 3), sn(4 * c, 2 * c, 3), sn(2 * c, c, 3)])
        self.extra = nn.ModuleList([sn(c, c, 3), sn(c, c, 3)])
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv0(maps), 0.2)
        skips = [x]
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.2)
            skips.append(x)
        skips.pop()  # the deepest features are not a skip
        for conv in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = F.leaky_relu(conv(x), 0.2)
            skip = skips.pop()
            if x.shape[-2:] != skip.shape[-2:]:  # 16 → 32 at the top, resized to 33
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = x + skip
        for conv in self.extra:
            x = F.leaky_relu(conv(x), 0.2)
        return self.conv_out(x)


@contextmanager
def _frozen(module: nn.Module):
    """Parameters of ``module`` do not require gradients inside the block."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


class Critic(nn.Module):
    """A discriminator and its GAN loss (binary cross-entropy on logits).

    Standard (SRGAN): D minimises BCE(D(real), 1) + BCE(D(fake), 0); G minimises
    BCE(D(fake), 1). Relativistic average (ESRGAN, as mmagic's ESRGAN): D minimises
    ½ [BCE(D(real) − mean D(fake), 1) + BCE(D(fake) − mean D(real), 0)], the means detached;
    G minimises ½ [BCE(D(fake) − mean D(real), 1) + BCE(D(real) − mean D(fake), 0)] with
    D(real) detached. Maps of shape (…, 33, 33) in grey levels enter D as they are.
    """

    def __init__(self, net: nn.Module, relativistic: bool) -> None:
        super().__init__()
        self.net = net
        self.relativistic = relativistic

    def logits(self, maps: torch.Tensor) -> torch.Tensor:
        return self.net(maps.reshape(-1, 1, HR, HR))

    @staticmethod
    def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, target)

    def discriminator_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Loss of the D step; ``fake`` must be detached from the generator."""
        d_fake, d_real = self.logits(fake), self.logits(real)
        if not self.relativistic:
            return self._bce(d_real, True) + self._bce(d_fake, False)
        return 0.5 * (self._bce(d_real - d_fake.mean().detach(), True)
                      + self._bce(d_fake - d_real.mean().detach(), False))

    def generator_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Adversarial loss of the G step; no gradient reaches the discriminator's parameters."""
        with _frozen(self):
            d_fake = self.logits(fake)
            if not self.relativistic:
                return self._bce(d_fake, True)
            d_real = self.logits(real).detach()
            return 0.5 * (self._bce(d_fake - d_real.mean(), True)
                          + self._bce(d_real - d_fake.mean(), False))
