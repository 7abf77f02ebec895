"""Element-wise shrinkage (thresholding) functions of the ISTA family.

All take ``v`` of any shape and a threshold ``theta`` that broadcasts against it (a float, a
scalar tensor or a per-element tensor), in the units of ``v`` (grey levels for HR maps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_threshold(v: torch.Tensor, theta) -> torch.Tensor:
    """sign(v)·max(|v| − θ, 0): the proximal operator of θ‖·‖₁."""
    return torch.sign(v) * F.relu(v.abs() - theta)


def hard_threshold(v: torch.Tensor, theta) -> torch.Tensor:
    """v where |v| > θ, 0 elsewhere (LIHT). No gradient reaches θ."""
    return v * (v.abs() > theta).to(v.dtype)


def support_selection(v: torch.Tensor, theta, percent: float) -> torch.Tensor:
    """Soft threshold except on the selected support (TiLISTA's ``shrink_ss``).

    Along the last axis, the entries whose magnitude exceeds both θ and the per-sample
    (1 − percent/100) quantile of the magnitudes are kept unchanged; all others are soft
    thresholded. ``percent`` is in 0..100.
    """
    mag = v.abs()
    cut = torch.quantile(mag, 1.0 - percent / 100.0, dim=-1, keepdim=True)
    keep = ((mag > theta) & (mag > cut)).to(v.dtype)
    return keep * v + soft_threshold((1.0 - keep) * v, theta)
