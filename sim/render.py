"""Rendering point targets into LR patches and HR ground-truth maps.

An LR image is Σ_k brightness_k × (pixel-integrated Gaussian PSF at the continuous position
of target k), in raw grey levels (docs/reference.md §1.4). The uint8 conversion rounds to
nearest and saturates to 0..255, as OpenCV's ``convertTo(CV_8U)`` does for the reference data.
"""

from __future__ import annotations

import numpy as np

from sim.geometry import PATCH, RATIO, SIGMA
from sim.phi import pixel_response

#: The level at which rendered frames clip (uint8).
UINT8_MAX = 255


def _flat_targets(targets: np.ndarray):
    """Targets (..., K, 3) as float64 (N, K, 3) plus the leading shape to restore."""
    t = np.asarray(targets, dtype=np.float64)
    return t.reshape(-1, t.shape[-2], 3), t.shape[:-2]


def render(
    targets: np.ndarray,
    patch: int = PATCH,
    sigma: float = SIGMA,
) -> np.ndarray:
    """Render targets into float64 LR images.

    Parameters
    ----------
    targets : ndarray of shape (..., K, 3)
        (row, col, brightness) per target in LR pixels / grey levels. Rows whose brightness
        or position is NaN are padding and contribute nothing.
    patch : int
        Side of the square image in pixels.
    sigma : float
        PSF standard deviation in pixels.

    Returns
    -------
    ndarray of shape (..., patch, patch), float64 grey levels (not rounded, not clipped).
    """
    t, lead = _flat_targets(targets)
    valid = np.all(np.isfinite(t), axis=-1)
    t = np.where(valid[..., None], t, 0.0)
    n, k = t.shape[:2]
    g_row = pixel_response(t[..., 0].ravel(), patch, sigma).T.reshape(n, k, patch)
    g_col = pixel_response(t[..., 1].ravel(), patch, sigma).T.reshape(n, k, patch)
    weight = np.where(valid, t[..., 2], 0.0)
    img = np.einsum("nkp,nkq->npq", g_row * weight[..., None], g_col)
    return img.reshape(*lead, patch, patch)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round to nearest (ties to even, like OpenCV) and saturate to 0..255."""
    return np.clip(np.rint(image), 0, UINT8_MAX).astype(np.uint8)


def render_uint8(
    targets: np.ndarray,
    noise_sigma: float = 0.0,
    background: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    patch: int = PATCH,
    sigma: float = SIGMA,
    gain: float = 0.0,
) -> np.ndarray:
    """Render, add optional background, shot noise and Gaussian noise, then convert to uint8.

    ``background`` broadcasts against the (..., patch, patch) image (grey levels);
    ``gain`` > 0 (grey levels per photo-electron) makes the signal Poisson–Gaussian: each
    pixel's expected level μ (targets plus background, at least 0) becomes gain ·
    Poisson(μ / gain), so its variance is gain · μ; ``noise_sigma`` is the std of the
    additive white Gaussian (read) noise in grey levels.
    """
    img = render(targets, patch, sigma)
    if background is not None:
        img = img + background
    if (noise_sigma > 0 or gain > 0) and rng is None:
        raise ValueError("noise_sigma > 0 or gain > 0 needs an explicit rng for reproducibility")
    if gain < 0:
        raise ValueError(f"gain must be >= 0 grey levels per electron (0: no shot noise), "
                         f"got {gain}")
    if gain > 0:
        img = gain * rng.poisson(np.maximum(img, 0.0) / gain).astype(np.float64)
    if noise_sigma > 0:
        img = img + rng.normal(0.0, noise_sigma, size=img.shape)
    return to_uint8(img)


def hr_index(pos: np.ndarray, ratio: int = RATIO) -> np.ndarray:
    """Nearest HR cell index of LR positions: round(c·x + (c − 1)//2), ties to even
    (docs/reference.md §1.6)."""
    return np.rint(ratio * np.asarray(pos, dtype=np.float64) + (ratio - 1) // 2).astype(np.int64)


def gt_map(targets: np.ndarray, patch: int = PATCH, ratio: int = RATIO) -> np.ndarray:
    """Ground-truth HR maps: brightness at each target's nearest HR cell (docs/reference.md §1.6).

    Parameters
    ----------
    targets : ndarray of shape (..., K, 3)
        (row, col, brightness); NaN rows are padding.

    Returns
    -------
    ndarray of shape (..., patch·ratio, patch·ratio), float32. Targets outside the map are
    dropped (the reference would wrap negative indices; that never happens on SeqCSIST).
    """
    t, lead = _flat_targets(targets)
    side = patch * ratio
    out = np.zeros((t.shape[0], side * side), dtype=np.float32)
    valid = np.all(np.isfinite(t), axis=-1)
    n_idx, k_idx = np.nonzero(valid)
    r = hr_index(t[n_idx, k_idx, 0], ratio)
    c = hr_index(t[n_idx, k_idx, 1], ratio)
    inside = (r >= 0) & (r < side) & (c >= 0) & (c < side)
    out[n_idx[inside], r[inside] * side + c[inside]] = t[n_idx[inside], k_idx[inside], 2]
    return out.reshape(*lead, side, side)


def splat_map(targets: np.ndarray, patch: int = PATCH, ratio: int = RATIO) -> np.ndarray:
    """Bilinear-splat HR maps: each target's brightness split over its 4 nearest HR cells.

    The weights are the bilinear interpolation weights of the continuous HR position
    u = c·x + (c − 1)//2, so the brightness-weighted centroid of a lone target's cells is
    exactly its position and the map sums to the total brightness (minus targets
    outside the map). A training-target option that carries the sub-cell position.

    Parameters
    ----------
    targets : ndarray of shape (..., K, 3)
        (row, col, brightness); NaN rows are padding.

    Returns
    -------
    ndarray of shape (..., patch·ratio, patch·ratio), float32.
    """
    t, lead = _flat_targets(targets)
    side = patch * ratio
    out = np.zeros((t.shape[0], side * side), dtype=np.float64)
    n_idx, k_idx = np.nonzero(np.all(np.isfinite(t), axis=-1))
    u = ratio * t[n_idx, k_idx, :2] + (ratio - 1) // 2  # (M, 2) continuous HR position
    base = np.floor(u).astype(np.int64)
    frac = u - base
    bright = t[n_idx, k_idx, 2]
    for dr in (0, 1):
        for dc in (0, 1):
            w = (frac[:, 0] if dr else 1 - frac[:, 0]) * (frac[:, 1] if dc else 1 - frac[:, 1])
            r, c = base[:, 0] + dr, base[:, 1] + dc
            ok = (r >= 0) & (r < side) & (c >= 0) & (c < side)
            np.add.at(out, (n_idx[ok], r[ok] * side + c[ok]), w[ok] * bright[ok])
    return out.astype(np.float32).reshape(*lead, side, side)
