"""Sampled, normalised 2-D Gaussian kernels (the blur kernels of BID and USRNet)."""

from __future__ import annotations

import numpy as np


def gaussian_kernel(taps, sigma: float) -> np.ndarray:
    """exp(−(u² + v²)/(2σ²)) at every pair of ``taps`` (rows u, columns v), summing to 1.

    Returns a float32 array of shape (len(taps), len(taps)); ``taps`` and ``sigma`` share a
    unit (HR cells for BID and USRNet).
    """
    t = np.asarray(taps, dtype=np.float64)
    kernel = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)
