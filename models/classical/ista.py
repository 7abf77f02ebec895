"""Classical ISTA baseline (docs/reference.md §5.2): not learned, single frame.

Per sample, with y the middle LR frame (121-vector, grey levels) and x the HR map
(1089-vector):

- x₀ = pinv(Φ) y, L = ‖Φ‖₂² (spectral norm squared, ≈ 8.5866);
- x ← soft(x + Φᵀ(y − Φx)/L, λ/L) with λ = 1, soft(v, θ) = sign(v)·max(|v| − θ, 0);
- at most 3 000 iterations; a sample stops as soon as ‖x_new − x‖₂ < 1e-4 and keeps x_new.

The batch version runs in float64 and freezes each sample at its own stopping iteration, so
every sample gets the result it would get if run alone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from models.base import UnmixingModel
from models.classical.per_sample import iterate_per_sample
from models.layers.shrinkage import soft_threshold
from sim.geometry import HR, WINDOW
from sim.phi import phi_matrix


@lru_cache(maxsize=1)
def _phi_pinv_lipschitz() -> tuple[np.ndarray, np.ndarray, float]:
    """Φ (121, 1089), pinv(Φ) (1089, 121), both float64, and L = ‖Φ‖₂²."""
    phi = np.array(phi_matrix(), dtype=np.float64)
    return phi, np.linalg.pinv(phi), float(np.linalg.norm(phi, 2) ** 2)


def ista(
    y: torch.Tensor,
    phi: torch.Tensor,
    phi_pinv: torch.Tensor,
    lipschitz: float,
    lam: float = 1.0,
    max_iter: int = 3000,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ISTA on a batch of LR vectors with per-sample stopping.

    Parameters
    ----------
    y : Tensor of shape (B, M), float64
        LR measurements (grey levels), M = 121.
    phi : Tensor of shape (M, N), float64
        Sampling matrix, N = 1089.
    phi_pinv : Tensor of shape (N, M), float64
        Pseudo-inverse of Φ (initialisation x₀ = pinv(Φ) y).
    lipschitz : float
        L = ‖Φ‖₂²; the step is 1/L and the threshold λ/L.
    lam : float
        Sparsity weight λ.
    max_iter : int
        Iteration cap per sample.
    tol : float
        A sample stops when the L2 norm of its update is below ``tol``.

    Returns
    -------
    x : Tensor of shape (B, N), float64
        Final iterate per sample (brightness per HR cell).
    iterations : Tensor of shape (B,), int64
        Iterations run per sample (``max_iter`` when it did not converge).
    """
    if y.ndim != 2 or y.shape[1] != phi.shape[0]:
        raise ValueError(f"y must have shape (B, {phi.shape[0]}), got {tuple(y.shape)}")
    threshold = lam / lipschitz

    def step(x, rows):
        x_new = soft_threshold(x + ((y[rows] - x @ phi.T) @ phi) / lipschitz, threshold)
        return x_new, torch.linalg.vector_norm(x_new - x, dim=1) < tol

    return iterate_per_sample(y @ phi_pinv.T, step, max_iter)


class IstaUnmixer(UnmixingModel):
    """ISTA on the middle frame of each window; no learned parameters.

    Parameters
    ----------
    lam : float
        Sparsity weight λ (threshold λ/L per iteration).
    max_iter : int
        Iteration cap per sample.
    tol : float
        Per-sample stopping tolerance on ‖Δx‖₂ (grey levels).
    """

    trainable = False

    def __init__(self, lam: float = 1.0, max_iter: int = 3000, tol: float = 1e-4) -> None:
        phi, pinv, lipschitz = _phi_pinv_lipschitz()
        super().__init__(phi)
        if lam < 0 or max_iter < 1 or tol <= 0:
            raise ValueError(
                f"ISTA needs lam >= 0, max_iter >= 1 and tol > 0; got lam={lam}, "
                f"max_iter={max_iter}, tol={tol}"
            )
        self.lam, self.max_iter, self.tol, self.lipschitz = lam, max_iter, tol, lipschitz
        self.register_buffer("phi64", torch.tensor(phi), persistent=False)
        self.register_buffer("phi_pinv64", torch.tensor(pinv), persistent=False)

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        """Maps (B, 33, 33) float32 from windows (B, 5, 11, 11); no auxiliary losses."""
        self.check_input(windows, frame_index)
        y = windows[:, WINDOW // 2].reshape(len(windows), -1).to(torch.float64)
        x, _ = ista(
            y,
            self.phi64.to(torch.float64),
            self.phi_pinv64.to(torch.float64),
            self.lipschitz,
            self.lam,
            self.max_iter,
            self.tol,
        )
        return x.to(torch.float32).reshape(len(windows), HR, HR), {}

