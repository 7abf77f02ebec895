"""Cutting a square patch out of a frame, padded where it leaves the frame.

NumPy only, so the stages that draw patches (the overlay) need not import the cropper's
tracking (scipy's assignment solver).
"""

from __future__ import annotations

import numpy as np


def crop(image: np.ndarray, origin: tuple[int, int], size: int, fill: float) -> np.ndarray:
    """``image[r:r+size, c:c+size]`` with pixels outside the image set to ``fill``.

    Examples
    --------
    >>> crop(np.arange(9.0).reshape(3, 3), (-1, 1), 2, fill=-1.0).tolist()
    [[-1.0, -1.0], [1.0, 2.0]]
    """
    height, width = image.shape
    r0, c0 = origin
    out = np.full((size, size), fill, dtype=np.float32)
    rs, re = max(r0, 0), min(r0 + size, height)
    cs, ce = max(c0, 0), min(c0 + size, width)
    if rs < re and cs < ce:
        out[rs - r0 : re - r0, cs - c0 : ce - c0] = image[rs:re, cs:ce]
    return out
