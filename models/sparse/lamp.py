"""LAMP, learned approximate message passing (Borgerding et al. 2017), as in the reference
(docs/reference.md §5.6).

From x₀ = Qinit·y and v₀ = 0, each of 16 layers computes, per sample (M = 121, N = 1089):

- the Onsager coefficient b = (N/M)·(fraction of non-zero entries of x) = ‖x‖₀/M;
- the corrected residual v ← y − Φx + b·v and its variance σ² = ‖v‖²/M;
- x ← soft(x + B v, max(λσ, 0)),

with B (1089, 121) initialised to Φᵀ/‖Φ‖₂² and λ (1089,) to 0.4. 2 125 728 parameters at
16 layers (Table VII: 2.13 M).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.layers.shrinkage import soft_threshold
from models.sparse.base import LearnedIsta


class Lamp(LearnedIsta):
    """LAMP; ``layers`` unrolled iterations, λ initialised to ``lam``."""

    def __init__(self, layers: int = 16, lam: float = 0.4) -> None:
        super().__init__()
        m, n = self.phi.shape
        b0 = self.phi.T / float(np.linalg.norm(self.phi.numpy(), 2) ** 2)
        self.b = nn.Parameter(b0.repeat(layers, 1, 1))
        self.lam = nn.Parameter(torch.full((layers, n), lam))
        self.config = {"layers": layers, "lam": lam}

    def iterate(self, y, x):
        m, n = self.phi.shape
        v = torch.zeros_like(y)
        for b, lam in zip(self.b, self.lam, strict=True):
            onsager = (x.abs() > 0).to(x.dtype).mean(dim=1, keepdim=True) * (n / m)
            v = y - x @ self.phi.T + onsager * v
            sigma = (v.pow(2).sum(dim=1, keepdim=True) / m).sqrt()
            x = soft_threshold(x + v @ b.T, (lam * sigma).clamp(min=0))
        return x
