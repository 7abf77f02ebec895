"""Sampling matrix Φ (LR pixels × HR cells) from the closed erf form, and the Qinit fit.

Φ[(p, q), (i, j)] = g(p; r_i) · g(q; r_j) with the pixel-integrated 1-D Gaussian
g(p; t) = ½[erf((p + ½ − t)/(σ√2)) − erf((p − ½ − t)/(σ√2))] and r_i = hr_centre(i).
Both axes are flattened row-major: row index p·n + q, column index i·(c·n) + j
(docs/reference.md §2.1).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import erf

from sim.geometry import PATCH, RATIO, SIGMA


def hr_centres(patch: int = PATCH, ratio: int = RATIO) -> np.ndarray:
    """Centres of the HR cells along one axis, in LR pixels: shape (patch·ratio,)."""
    return (np.arange(patch * ratio) - (ratio - 1) // 2) / ratio


def pixel_response(centres: np.ndarray, patch: int = PATCH, sigma: float = SIGMA) -> np.ndarray:
    """1-D pixel-integrated Gaussian: shape (patch, len(centres)).

    Entry [p, k] is the fraction of a unit 1-D Gaussian (std ``sigma``, LR pixels) centred at
    ``centres[k]`` that falls in pixel p = [p − ½, p + ½].
    """
    p = np.arange(patch, dtype=np.float64)[:, None]
    t = np.asarray(centres, dtype=np.float64)[None, :]
    s = sigma * np.sqrt(2.0)
    return 0.5 * (erf((p + 0.5 - t) / s) - erf((p - 0.5 - t) / s))


def pixel_response_slope(centres: np.ndarray, patch: int = PATCH,
                         sigma: float = SIGMA) -> np.ndarray:
    """Derivative of :func:`pixel_response` with respect to the centre: shape
    (patch, len(centres)), per LR pixel of centre motion.

    ∂g(p; t)/∂t = −[φ(p + ½ − t) − φ(p − ½ − t)], φ the Gaussian density of std ``sigma``.
    """
    p = np.arange(patch, dtype=np.float64)[:, None]
    t = np.asarray(centres, dtype=np.float64)[None, :]
    norm = 1.0 / (sigma * np.sqrt(2.0 * np.pi))
    upper = np.exp(-0.5 * ((p + 0.5 - t) / sigma) ** 2)
    lower = np.exp(-0.5 * ((p - 0.5 - t) / sigma) ** 2)
    return -norm * (upper - lower)


@lru_cache(maxsize=16)
def _phi_cached(patch: int, ratio: int, sigma: float) -> np.ndarray:
    g = pixel_response(hr_centres(patch, ratio), patch, sigma)  # (n, c·n)
    phi = np.einsum("pi,qj->pqij", g, g).reshape(patch * patch, (patch * ratio) ** 2)
    phi.setflags(write=False)
    return phi


def phi_matrix(patch: int = PATCH, ratio: int = RATIO, sigma: float = SIGMA) -> np.ndarray:
    """Φ of shape (patch², (ratio·patch)²), float64, read-only and cached.

    Column k = i·(c·n) + j is the LR image (flattened) of a unit-brightness point target
    at HR cell (i, j).
    """
    return _phi_cached(int(patch), int(ratio), float(sigma))


def fit_qinit(gt_maps: np.ndarray, phi: np.ndarray | None = None) -> np.ndarray:
    """Least-squares initialisation matrix Qinit = X Yᵀ (Y Yᵀ)⁻¹ with Y = Φ X
    (docs/reference.md §2.2).

    Parameters
    ----------
    gt_maps : ndarray of shape (N, H, W) or (N, H·W)
        Ground-truth HR maps of the training split (brightness units).
    phi : ndarray of shape (n², H·W), optional
        Sampling matrix; defaults to the SeqCSIST Φ.

    Returns
    -------
    ndarray of shape (H·W, n²), float64. Use as ``x0 = y @ Qinit.T`` for a (B, n²) batch.
    """
    phi = phi_matrix() if phi is None else phi
    x = np.asarray(gt_maps, dtype=np.float64).reshape(len(gt_maps), -1)  # (N, H·W)
    if x.shape[1] != phi.shape[1]:
        raise ValueError(f"GT maps have {x.shape[1]} cells but Φ has {phi.shape[1]} columns")
    y = x @ phi.T  # (N, n²)
    yyt = y.T @ y
    xyt = x.T @ y
    # pinv equals the reference's inv for a full-rank YYᵀ (any real training split) and
    # stays defined for tiny splits (fewer maps than LR pixels).
    return xyt @ np.linalg.pinv(yyt)
