"""TiLISTA as in the reference (docs/reference.md §5.6): LISTA with support selection.

From x₀ = Qinit·y, layer k (0-based) computes x ← ss(x + αₖ Wₖ (y − Φx), θₖ, pₖ), where ss
soft-thresholds every entry except those above both θₖ and the per-sample (100 − pₖ)-th
percentile of the magnitudes, with pₖ = min(1.2·(k + 1), 13) percent. Wₖ (1089, 121) starts at
Qinit, θₖ (1089,) at 0.4/(1.001‖Φ‖₂²) and αₖ at 1.

Despite the name ("tied"), the reference gives every layer its own W, so do we:
2 125 744 parameters at 16 layers. Table VII prints 2.22 M, which does not follow from the
reference code (16 × (1089·121 + 1089 + 1)); we could not find what else it counts.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers.shrinkage import support_selection
from models.sparse.base import LearnedIsta, lista_threshold

PERCENT_STEP = 1.2
PERCENT_MAX = 13.0


class TiLista(LearnedIsta):
    """TiLISTA; ``layers`` unrolled iterations, ``lam`` sets the initial threshold."""

    def __init__(self, layers: int = 16, lam: float = 0.4) -> None:
        super().__init__()
        m, n = self.phi.shape
        self.w = nn.Parameter(torch.empty(layers, n, m))
        theta = lista_threshold(self.phi.numpy(), lam)
        self.theta = nn.Parameter(torch.full((layers, n), theta))
        self.alpha = nn.Parameter(torch.ones(layers))
        self.percents = [min(PERCENT_STEP * (k + 1), PERCENT_MAX) for k in range(layers)]
        self.init_from_qinit()
        self.config = {"layers": layers, "lam": lam}

    def init_from_qinit(self) -> None:
        self.w.data.copy_(self.qinit.expand_as(self.w))

    def iterate(self, y, x):
        layers = zip(self.w, self.theta, self.alpha, self.percents, strict=True)
        for w, theta, alpha, percent in layers:
            z = x + alpha * ((y - x @ self.phi.T) @ w.T)
            x = support_selection(z, theta, percent)
        return x
