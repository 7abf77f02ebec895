"""A patch stack's background level: the median of its outer ring of pixels.

The one estimate of the background under a spot that the live cropper, the offline
evaluation protocol and the trainer all subtract, so a model sees the same kind of input in
all three. The ring of an 11×11 patch lies 5 LR pixels from the centre, 10 PSF standard
deviations: a target near the centre adds nothing to it, and the median ignores the few ring
pixels a target near the edge lights up. On a noisy dark background (values clipped at 0)
the median stays 0 (or 1 at σ = 5), so subtracting it leaves clean and noise-only data as
they are; on a textured scene it removes the scene's mean level, not its texture.

NumPy only.
"""

from __future__ import annotations

import numpy as np


def ring_levels(stacks: np.ndarray) -> np.ndarray:
    """Median of the outer ring of pixels of each item of ``stacks``.

    Parameters
    ----------
    stacks : ndarray of shape (N, ..., S, S)
        N stacks of S×S patches (grey levels), e.g. (N, 5, 11, 11) windows or
        (N, 20, 11, 11) trajectories.

    Returns
    -------
    ndarray of shape (N,), float32
        Each stack's level (grey levels): the median over all its patches' ring pixels.

    Examples
    --------
    >>> p = np.full((2, 1, 5, 5), 3.0); p[:, 0, 1:4, 1:4] = 100.0; p[1] += 7
    >>> ring_levels(p).tolist()
    [3.0, 10.0]
    """
    stacks = np.asarray(stacks)
    ring = np.concatenate(
        [
            stacks[..., 0, :],
            stacks[..., -1, :],
            stacks[..., 1:-1, 0],
            stacks[..., 1:-1, -1],
        ],
        axis=-1,
    )
    return np.median(ring.reshape(len(stacks), -1), axis=1).astype(np.float32)
