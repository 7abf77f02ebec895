"""USRNet (Zhang et al. 2020) as in the reference (docs/reference.md §5.7).

Degradation model: the LR frame y (11×11) is the HR map x (33×33) blurred by k, a normalised
3×3 Gaussian with σ = 0.5 HR cells, then decimated by s = 3 keeping the top-left cell of each
3×3 block; noise level 0. From x₀ = nearest ×3 upsampling of y, 8 iterations of

- data step (closed form in the Fourier domain, circular boundaries):
  zₖ = argmin_z ‖y − (k ∗ z)↓s‖² + αₖ‖z − xₖ₋₁‖²;
- prior step: xₖ = ResUNet([zₖ, βₖ·1]) (:class:`~models.unfolding.resunet.ResUNet`),

where (α₁…α₈, β₁…β₈) = HyPaNet(noise level, s), a 1×1-conv MLP 2→64→64→16 with a softplus
output (+1e-6). 1 068 736 parameters, as in Table VII (1.07 M).

The degradation model is the reference's and not the one that made the data: Φ blurs with
σ = 0.5 LR pixels (1.5 HR cells) and samples the centre cell 3p + 1 of each block
(docs/reference.md §1.3, §2.1). The learned prior has to absorb the difference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.base import UnmixingModel
from models.layers.gaussian import gaussian_kernel
from models.unfolding.resunet import ResUNet
from sim.geometry import HR, RATIO, WINDOW
from sim.phi import phi_matrix

KERNEL_SIZE = 3
KERNEL_SIGMA = 0.5  # HR cells


def otf(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Optical transfer function (size, size), complex: the FFT of ``kernel`` (h, w) zero-padded
    to size × size and rolled so that its centre sits on cell (0, 0) (KAIR's ``p2o``)."""
    padded = torch.zeros(size, size, dtype=kernel.dtype)
    padded[: kernel.shape[0], : kernel.shape[1]] = kernel
    padded = torch.roll(padded, (-(kernel.shape[0] // 2), -(kernel.shape[1] // 2)), dims=(0, 1))
    return torch.fft.fft2(padded)


def block_mean(a: torch.Tensor, scale: int) -> torch.Tensor:
    """Mean of the scale × scale distinct blocks of a (..., H, W): shape (..., H/s, W/s)
    (the Fourier-domain counterpart of decimation by ``scale``)."""
    *lead, h, w = a.shape
    return a.reshape(*lead, scale, h // scale, scale, w // scale).mean(dim=(-4, -2))


class HyPaNet(nn.Module):
    """1×1-conv MLP (N, 2, 1, 1) → (N, out, 1, 1): ReLU hidden layers, softplus + 1e-6 output."""

    def __init__(self, out_channels: int = 16, channels: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(2, channels, 1), nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
            nn.Conv2d(channels, out_channels, 1), nn.Softplus(),
        )

    def forward(self, x):
        return self.mlp(x) + 1e-6


class UsrNet(UnmixingModel):
    """USRNet on the middle frame (LR input); see the module docstring.

    Parameters
    ----------
    iterations : int
        Unfolded iterations (data step + prior).
    channels : sequence of 4 ints
        ResUNet features per level.
    blocks : int
        ResUNet residual blocks per level.
    hyper_channels : int
        HyPaNet hidden features.
    noise_level : float
        Noise level fed to HyPaNet (the reference feeds 0).
    """

    def __init__(self, iterations: int = 8, channels=(16, 32, 64, 128), blocks: int = 2,
                 hyper_channels: int = 64, noise_level: float = 0.0) -> None:
        super().__init__(phi_matrix())
        self.iterations = iterations
        kernel = torch.from_numpy(gaussian_kernel(np.arange(KERNEL_SIZE) - KERNEL_SIZE // 2,
                                                  KERNEL_SIGMA))
        fb = otf(kernel, HR)
        # derived from the fixed kernel, so not stored in weight files
        self.register_buffer("fb", fb, persistent=False)  # (33, 33) complex
        self.register_buffer("inv_w", block_mean(fb.abs() ** 2, RATIO), persistent=False)
        self.register_buffer("cond", torch.tensor([noise_level, float(RATIO)]).view(1, 2, 1, 1),
                             persistent=False)
        self.prior = ResUNet(2, 1, channels, blocks)
        self.hyper = HyPaNet(2 * iterations, hyper_channels)
        self.config = {"iterations": iterations, "channels": list(channels), "blocks": blocks,
                       "hyper_channels": hyper_channels, "noise_level": noise_level}

    def data_step(self, x, fbfy, alpha):
        """Closed-form data step: x (N, 1, 33, 33), fbfy = conj(F k)·F(y↑) → z (N, 1, 33, 33)."""
        fr = fbfy + torch.fft.fft2(alpha * x)
        fbr = block_mean(self.fb * fr, RATIO)
        correction = self.fb.conj() * (fbr / (self.inv_w + alpha)).repeat(1, 1, RATIO, RATIO)
        return torch.fft.ifft2((fr - correction) / alpha).real

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        """Maps (B, 33, 33) from windows (B, 5, 11, 11); no auxiliary losses."""
        self.check_input(windows, frame_index)
        y = windows[:, WINDOW // 2, None]  # (B, 1, 11, 11)
        zero_filled = torch.zeros(len(y), 1, HR, HR, dtype=y.dtype, device=y.device)
        zero_filled[..., ::RATIO, ::RATIO] = y
        fbfy = self.fb.conj() * torch.fft.fft2(zero_filled)
        x = F.interpolate(y, scale_factor=RATIO, mode="nearest")
        ab = self.hyper(self.cond)  # (1, 2·iterations, 1, 1)
        for k in range(self.iterations):
            x = self.data_step(x, fbfy, ab[:, k : k + 1])
            beta = ab[:, self.iterations + k : self.iterations + k + 1].expand_as(x)
            x = self.prior(torch.cat([x, beta], dim=1))
        return x.view(-1, HR, HR), {}
