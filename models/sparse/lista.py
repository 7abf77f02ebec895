"""LISTA (Gregor & LeCun 2010) as in the reference (docs/reference.md §5.6).

16 untied layers x ← soft(W x + B y, max(θ, 0)) from x₀ = Qinit·y, with W (1089, 1089)
initialised to I − Qinit·Φ, B (1089, 121) to Qinit and θ (1089,) to 0.4/(1.001‖Φ‖₂²).
21 100 464 parameters at 16 layers (Table VII: 21.10 M).
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers.shrinkage import soft_threshold
from models.sparse.base import LearnedIsta, lista_threshold


class Lista(LearnedIsta):
    """LISTA; ``layers`` unrolled iterations, ``lam`` sets the initial threshold."""

    def __init__(self, layers: int = 16, lam: float = 0.4) -> None:
        super().__init__()
        m, n = self.phi.shape
        self.w = nn.Parameter(torch.empty(layers, n, n))
        self.b = nn.Parameter(torch.empty(layers, n, m))
        theta = lista_threshold(self.phi.numpy(), lam)
        self.theta = nn.Parameter(torch.full((layers, n), theta))
        self.init_from_qinit()
        self.config = {"layers": layers, "lam": lam}

    def init_from_qinit(self) -> None:
        eye = torch.eye(self.phi.shape[1], device=self.phi.device)
        self.w.data.copy_((eye - self.qinit @ self.phi).expand_as(self.w))
        self.b.data.copy_(self.qinit.expand_as(self.b))

    def iterate(self, y, x):
        for w, b, theta in zip(self.w, self.b, self.theta, strict=True):
            x = soft_threshold(x @ w.T + y @ b.T, theta.clamp(min=0))
        return x
