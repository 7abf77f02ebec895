"""FISTA-Net (Xiang et al. 2021) as in the reference (docs/reference.md §5.7).

One :class:`~models.unfolding.blocks.PlusBlock` (32 features, with biases) whose weights every
iteration reuses, inside a FISTA loop from x₀ = Qinit·y. Iteration k (0-based):

- step μₖ = softplus(w_μ·k + b_μ), threshold θₖ = softplus(w_θ·k + b_θ), momentum
  ρₖ = (softplus(w_ρ·k + b_ρ) − softplus(b_ρ)) / softplus(w_ρ·k + b_ρ), the six scalars learned
  (init w_μ = −0.2, b_μ = 0.1, w_θ = −0.5, b_θ = −2, w_ρ = 0.5, b_ρ = 0);
- xₖ = ReLU(block(zₖ − μₖΦᵀΦzₖ + μₖΦᵀy)), then zₖ₊₁ = xₖ + ρₖ(xₖ − xₖ₋₁), z₀ = x₀.

Training adds ``cons`` = Σₖ mean(sₖ²) (symmetry) and ``sparsity`` = Σₖ mean|soft-thresholded
features|; the L1 term of the reference loss is the trainer's ``l1`` (it needs the target).

Parameters: 37 607. The reference block also defines four 32→32 convolutions that its forward
never uses (``conv2/conv3_forward/backward``, 4 × 9 248 = 36 992 parameters); Table VII's
74.60 K (74 599) counts them. We leave them out, since they do not affect the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import UnmixingModel
from models.layers.unfolding import gradient_step
from models.unfolding.blocks import PlusBlock
from sim.geometry import HR, WINDOW
from sim.phi import phi_matrix


class FistaNet(UnmixingModel):
    """FISTA-Net on the middle frame; ``iterations`` uses of one block of ``channels``."""

    def __init__(self, iterations: int = 7, channels: int = 32) -> None:
        super().__init__(phi_matrix())
        self.register_buffer("phitphi", self.phi.T @ self.phi, persistent=False)  # (1089, 1089)
        self.iterations = iterations
        self.block = PlusBlock(channels, bias=True)
        self.w_mu, self.b_mu = nn.Parameter(torch.tensor(-0.2)), nn.Parameter(torch.tensor(0.1))
        self.w_theta = nn.Parameter(torch.tensor(-0.5))
        self.b_theta = nn.Parameter(torch.tensor(-2.0))
        self.w_rho, self.b_rho = nn.Parameter(torch.tensor(0.5)), nn.Parameter(torch.tensor(0.0))
        self.config = {"iterations": iterations, "channels": channels}

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        """Maps (B, 33, 33) from windows (B, 5, 11, 11); ``cons``, ``sparsity`` in training."""
        self.check_input(windows, frame_index)
        y = windows[:, WINDOW // 2].flatten(1)
        phity = y @ self.phi
        x_old = z = y @ self.qinit.T
        l_cons = l_sparse = 0.0
        for k in range(self.iterations):
            mu = F.softplus(self.w_mu * k + self.b_mu)
            theta = F.softplus(self.w_theta * k + self.b_theta)
            r = gradient_step(z, self.phitphi, phity, mu).view(-1, 1, HR, HR)
            out, feats, sym = self.block(r, theta, self.training)
            x = F.relu(out).flatten(1)
            rho_sp = F.softplus(self.w_rho * k + self.b_rho)
            z = x + (rho_sp - F.softplus(self.b_rho)) / rho_sp * (x - x_old)
            x_old = x
            if self.training:
                l_cons = l_cons + sym
                l_sparse = l_sparse + feats.abs().mean()
        aux = {"cons": l_cons, "sparsity": l_sparse} if self.training else {}
        return x.view(-1, HR, HR), aux
