"""Element-wise shrinkage (thresholding) functions of the ISTA family.

All take ``v`` of any shape and a threshold ``theta`` that broadcasts against it (a float, a
scalar tensor or a per-element tensor), in the units of ``v`` (grey levels for HR maps).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F


def soft_threshold(v: torch.Tensor, theta) -> torch.Tensor:
    """sign(v)·max(|v| − θ, 0): the proximal operator of θ‖·‖₁.

    Without autograd, on a dense CPU tensor and a scalar θ, one compiled pass instead of five
    tensor operations (the same values; DeRefNet's unfolding spends a quarter of its time
    here otherwise, ``benchmarks/bench_derefnet.json``).
    """
    theta_t = torch.as_tensor(theta)
    if (theta_t.numel() == 1 and v.device.type == "cpu" and v.dtype == torch.float32
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (v.requires_grad or theta_t.requires_grad))
            and (v.is_contiguous() or v.is_contiguous(memory_format=torch.channels_last))):
        out = torch.empty_like(v)  # same strides, so both flat views walk memory alike
        _soft_threshold_flat(_flat(v.detach()), float(theta_t), _flat(out))
        return out
    return torch.sign(v) * F.relu(v.abs() - theta)


def _flat(t: torch.Tensor) -> np.ndarray:
    """The storage of a dense tensor (contiguous or channels-last) as a 1-D array."""
    return torch.as_strided(t, (t.numel(),), (1,), t.storage_offset()).numpy()


@numba.njit(fastmath=True, cache=True)
def _soft_threshold_flat(v, theta, out):  # pragma: no cover - compiled
    for i in range(v.size):
        a = abs(v[i]) - theta
        out[i] = (a if a > 0 else 0.0) * np.sign(v[i])


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
