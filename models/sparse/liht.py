"""LIHT, learned iterative hard thresholding, as in the reference (docs/reference.md §5.6).

16 untied layers x ← hard(W x + B y, θ) from x₀ = Qinit·y, where hard keeps the entries with
|·| > θ; W (1089, 1089) starts at I, B (1089, 121) at Qinit and θ (1089,) at √0.4.
21 100 464 parameters at 16 layers (Table VII: 21.10 M). As in the reference, the hard
threshold passes no gradient to θ, so θ stays at its initial value.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.layers.shrinkage import hard_threshold
from models.sparse.base import LearnedIsta


class Liht(LearnedIsta):
    """LIHT; ``layers`` unrolled iterations, θ initialised to √``lam``."""

    def __init__(self, layers: int = 16, lam: float = 0.4) -> None:
        super().__init__()
        m, n = self.phi.shape
        self.w = nn.Parameter(torch.eye(n).repeat(layers, 1, 1))
        self.b = nn.Parameter(torch.empty(layers, n, m))
        self.theta = nn.Parameter(torch.full((layers, n), math.sqrt(lam)))
        self.init_from_qinit()
        self.config = {"layers": layers, "lam": lam}

    def init_from_qinit(self) -> None:
        self.b.data.copy_(self.qinit.expand_as(self.b))

    def iterate(self, y, x):
        for w, b, theta in zip(self.w, self.b, self.theta, strict=True):
            x = hard_threshold(x @ w.T + y @ b.T, theta)
        return x
