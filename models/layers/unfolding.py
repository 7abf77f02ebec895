"""The ISTA-Net layer (Zhang & Ghanem 2018), shared by ISTA-Net and DeRefNet's first stage.

HR maps are row vectors x of shape (N, 1089) (grey levels); Φ is (121, 1089), so the data-term
gradient step on ½‖y − Φx‖² reads r = x − ρ·x ΦᵀΦ + ρ·Φᵀy with ``gram`` = ΦᵀΦ (1089, 1089) or
Φ itself (:func:`gradient_step`) and ``phity`` = y Φ (N, 1089), i.e. (Φᵀy)ᵀ. See
docs/reference.md §4.2 and §5.7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.narrow import conv3x3
from models.layers.shrinkage import soft_threshold
from sim.geometry import HR


def gradient_step(x, gram, phity, step):
    """r = x − step·ΦᵀΦx + step·Φᵀy for row vectors x, phity (N, 1089); ``step`` broadcasts.

    ``gram`` is ΦᵀΦ (1089, 1089), or Φ (121, 1089) itself: x·ΦᵀΦ is then computed as (x·Φᵀ)·Φ,
    the same product with 4.5× fewer MACs and a 0.5 MB operand instead of 4.7 MB (what a
    few-frame batch, DeRefNet's live unmixer, is bound by).
    """
    xg = x @ gram if gram.shape[0] == gram.shape[1] else (x @ gram.T) @ gram
    return x - step * xg + step * phity


class UnfoldingLayer(nn.Module):
    """One ISTA-Net layer: gradient step, G, soft threshold, G̃ (all convs 3×3, no bias).

    G = conv 1→C, ReLU, conv C→C; G̃ = conv C→C, ReLU, conv C→1; ρ (init 0.5) and θ
    (init 0.01) are learned scalars; kernels are Xavier-normal. 19 010 parameters at C = 32.
    """

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.tensor(0.5))
        self.theta = nn.Parameter(torch.tensor(0.01))
        shapes = [(channels, 1), (channels, channels), (channels, channels), (1, channels)]
        self.kernels = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(o, i, 3, 3))) for o, i in shapes
        )

    def forward(self, x, gram, phity, with_symmetry: bool):
        """x, phity: (N, 1089); returns x_new (N, 1089) and mean(s²) (or None), where the
        symmetry residual s = G̃(G(r)) − r is taken on the gradient-step estimate r."""
        r = gradient_step(x, gram, phity, self.rho).view(-1, 1, HR, HR)
        w1, w2, w3, w4 = self.kernels
        g = F.conv2d(F.relu(F.conv2d(r, w1, padding=1), inplace=True), w2, padding=1)
        z = soft_threshold(g, self.theta)
        x_new = conv3x3(F.relu(F.conv2d(z, w3, padding=1), inplace=True), w4)
        sym = None
        if with_symmetry:
            s = conv3x3(F.relu(F.conv2d(g, w3, padding=1), inplace=True), w4) - r
            sym = s.pow(2).mean()
        return x_new.flatten(1), sym


def unfold(layers, x, gram, phity, with_symmetry: bool):
    """Run ``layers`` from x (N, 1089); each is called like :class:`UnfoldingLayer`,
    ``layer(x, gram, phity, with_symmetry) -> (x_new, mean(s²) or None)``; ``gram`` as in
    :func:`gradient_step`.

    Returns the last iterate (N, 1089) and Σ_k mean(s_k²) over the layers (None unless
    ``with_symmetry``).
    """
    l_cons = None
    for layer in layers:
        x, sym = layer(x, gram, phity, with_symmetry)
        if sym is not None:
            l_cons = sym if l_cons is None else l_cons + sym
    return x, l_cons
