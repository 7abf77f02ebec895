"""ISTA-Net+ (Zhang & Ghanem 2018) as in the reference (docs/reference.md §5.7).

From x₀ = Qinit·y, 9 untied layers; layer k takes the gradient step rₖ = x − ρₖΦᵀΦx + ρₖΦᵀy
and applies the :class:`~models.unfolding.blocks.PlusBlock` (32 features, no biases,
threshold θₖ init 0.01). Training adds ``cons`` = Σₖ mean(sₖ²), with
sₖ = F̃(F(D(rₖ))) − D(rₖ).

Corrected step init: the reference starts every ρₖ at 0.5, ISTA-Net's value for a Φ with
orthonormal rows. Our Φ has ‖Φ‖₂² = 8.59, so a step of 0.5 multiplies the top singular
direction by |1 − 0.5·8.59| = 3.3 per layer (4.5·10⁴ over 9 layers, through the residual
block): training starts at an MSE near 10⁷ and must first learn ρ down. We start at the ISTA
step 1/‖Φ‖₂² instead; ``faithful=True`` keeps 0.5 (docs/reference.md §8).

9 × 37 442 = 336 978 parameters, which is what the reference code builds; Table VII prints
0.38 M, which we could not reproduce (its 7.70 G MACs per 20-frame batch do match 9 layers).
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers.unfolding import gradient_step
from models.unfolding.blocks import PlusBlock
from models.unfolding.istanet import IstaNet
from sim.geometry import HR

#: The reference's initial step ρₖ (kept by ``faithful=True``).
FAITHFUL_STEP = 0.5


class PlusLayer(nn.Module):
    """Gradient step with learned ρ, then the ISTA-Net+ block with learned threshold θ."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.tensor(0.5))
        self.theta = nn.Parameter(torch.tensor(0.01))
        self.block = PlusBlock(channels)

    def forward(self, x, gram, phity, with_symmetry: bool):
        """x, phity (N, 1089) → x_new (N, 1089) and mean(s²) (or None)."""
        r = gradient_step(x, gram, phity, self.rho).view(-1, 1, HR, HR)
        # .forward, not __call__: module pre-hooks (FlopCounterMode's module tracker) fail on a
        # Parameter argument under inference_mode
        out, _, sym = self.block.forward(r, self.theta, with_symmetry)
        return out.flatten(1), sym


class IstaNetPlus(IstaNet):
    """ISTA-Net+ on the middle frame: ISTA-Net with :class:`PlusLayer` layers."""

    Layer = PlusLayer

    def __init__(self, layers: int = 9, channels: int = 32, faithful: bool = False) -> None:
        super().__init__(layers, channels)
        ista_step = 1.0 / float(torch.linalg.matrix_norm(self.phi, 2) ** 2)
        step = FAITHFUL_STEP if faithful else ista_step
        for layer in self.layers:
            layer.rho.data.fill_(step)
        self.config = {**self.config, "faithful": faithful}
