"""The background of a staring sensor's scene, learned pixel by pixel where no blob is.

A window's ring median (:func:`sim.background_level.ring_levels`) removes a scene's level
but not its texture: on a cloud edge or a building the 11×11 patch keeps the clutter, and
the unmixers, trained on flat backgrounds, take it for targets. A staring sensor sees the
same scene in every frame while the targets move over it, so each pixel's background can be
learned from the frames in which no blob covers it:

- every frame, the pixels farther than ``mask_px`` from every blob centroid update their
  estimate: the running mean of their first frames, then an exponential average with
  weight ``alpha`` (weight ``max(1/n, alpha)`` for a pixel seen n times), which follows a
  slow drift of the scene and averages the sensor noise down (to ``sqrt(alpha / 2)`` of
  it, 16 % at 0.05);
- pixels never seen free of a blob (a group present since the first frame, or just
  spawned) are filled from the pixels around them by OpenCV's Navier-Stokes inpainting,
  which carries the texture's level lines into the hole; the guess is replaced as soon as
  the target has moved off the pixel. (Telea's inpainting, the other choice, adds about one
  grey level of error to a float image even when it is flat: measured on the flat live
  chain, live CSO-mAP 85.5 with it against 87.8 with Navier-Stokes.)

The targets move slowly (0.03–0.1 px per frame in the simulator), so a group born on a
pixel uncovers it after some tens of frames, and the pixels ahead of it were learned while
it was elsewhere. A panning camera breaks the per-pixel model: use the ring median there.
"""

from __future__ import annotations

import cv2
import numpy as np


class SceneBackground:
    """Per-pixel background of a static scene (see the module docstring).

    Parameters
    ----------
    alpha : float
        Smallest weight of a new frame in a pixel's estimate (0 < alpha <= 1).
    mask_px : float
        Radius (px) around each blob centroid whose pixels are not updated.
    """

    def __init__(self, alpha: float = 0.05, mask_px: float = 3.0) -> None:
        if not 0 < alpha <= 1 or mask_px < 0:
            raise ValueError("alpha must be in (0, 1] and mask_px >= 0")
        self.alpha, self.mask_px = alpha, mask_px
        self._mean: np.ndarray | None = None  # (H, W) float32
        self._count: np.ndarray | None = None  # (H, W) frames each pixel was seen free
        self._filled: np.ndarray | None = None  # the estimate, unseen pixels inpainted

    def free_mask(self, shape: tuple[int, int], centroids: np.ndarray) -> np.ndarray:
        """(H, W) bool: True where no blob centroid is within ``mask_px``."""
        covered = np.zeros(shape, np.uint8)
        radius = int(round(self.mask_px))
        for row, col in np.asarray(centroids, dtype=np.float64).reshape(-1, 2):
            cv2.circle(covered, (int(round(col)), int(round(row))), radius, 1, thickness=-1)
        return covered == 0

    def update(self, image: np.ndarray, centroids: np.ndarray) -> None:
        """Learn from one frame.

        Parameters
        ----------
        image : ndarray of shape (H, W)
            The frame (grey levels).
        centroids : ndarray of shape (N, 2)
            Its blob centroids (row, col), frame pixels.
        """
        image = np.asarray(image, dtype=np.float32)
        if self._mean is None or self._mean.shape != image.shape:
            self._mean = np.zeros(image.shape, np.float32)
            self._count = np.zeros(image.shape, np.float32)
        free = self.free_mask(image.shape, centroids)
        count = self._count[free] + 1
        weight = np.maximum(1.0 / count, self.alpha).astype(np.float32)
        self._mean[free] += weight * (image[free] - self._mean[free])
        self._count[free] = count
        self._filled = None

    def estimate(self) -> np.ndarray | None:
        """(H, W) float32: the background (unseen pixels inpainted), or None before the first
        frame."""
        if self._mean is None:
            return None
        if self._filled is None:
            self._filled = self._filled_in()
        return self._filled

    def _filled_in(self) -> np.ndarray:
        """The per-pixel means, the pixels never seen filled (see the module docstring)."""
        unseen = self._count == 0
        if unseen.all() or not unseen.any():
            return self._mean
        return cv2.inpaint(self._mean, unseen.astype(np.uint8), 3, cv2.INPAINT_NS)
