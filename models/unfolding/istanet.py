"""ISTA-Net (Zhang & Ghanem 2018) as in the reference (docs/reference.md §5.7).

From x₀ = Qinit·y, ``layers`` untied :class:`~models.layers.unfolding.UnfoldingLayer` s (the
same layer as DeRefNet's first stage, docs/reference.md §4.2): gradient step with a learned
ρₖ, G, soft threshold θₖ, G̃. Training adds the symmetry constraint
``cons`` = Σₖ mean(sₖ²), sₖ = G̃(G(rₖ)) − rₖ.

The reference config sets 8 layers, but Table VII's 0.17 M parameters and 4.09 G MACs per
20-frame batch correspond to 9 (docs/reference.md §8 #12), our default: 171 090 parameters.
(With 9 layers the reference's constraint would cover only the first 8; ours covers all.)
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import UnmixingModel
from models.layers.unfolding import UnfoldingLayer, unfold
from sim.geometry import HR, WINDOW
from sim.phi import phi_matrix


class IstaNet(UnmixingModel):
    """ISTA-Net on the middle frame; ``layers`` unfolding layers of ``channels`` features.

    ``Layer`` is the class of one layer (``Layer(channels)``, called as
    ``layer(x, gram, phity, with_symmetry) -> (x, mean(s²) or None)``); ISTA-Net+ swaps it.
    """

    Layer: type[nn.Module] = UnfoldingLayer

    def __init__(self, layers: int = 9, channels: int = 32) -> None:
        super().__init__(phi_matrix())
        self.register_buffer("phitphi", self.phi.T @ self.phi, persistent=False)  # (1089, 1089)
        self.layers = nn.ModuleList(self.Layer(channels) for _ in range(layers))
        self.config = {"layers": layers, "channels": channels}

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        """Maps (B, 33, 33) from windows (B, 5, 11, 11); ``cons`` in training mode."""
        self.check_input(windows, frame_index)
        y = windows[:, WINDOW // 2].flatten(1)
        x, l_cons = unfold(self.layers, y @ self.qinit.T, self.phitphi, y @ self.phi,
                           self.training)
        return x.view(-1, HR, HR), ({"cons": l_cons} if self.training else {})
