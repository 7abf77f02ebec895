"""Detection metrics of infrared small-target detection (IRSTD) as the field reports them.

The conventions of the BasicIRSTD-style toolkits that the SeqCSIST paper's Table VIII uses,
with a CSO group (the spot its sub-targets blur into) as the target:

- **Pd** (probability of detection): a truth group is detected when the centroid of a
  predicted component lies within ``distance`` px (default 3) of the group's centroid (its
  sub-targets' brightness-weighted mean position). Each component detects at most one group;
  groups are matched in order of their nearest component, closest first.
  Pd = detected groups / truth groups, pooled over all frames.
- **Fa** (false-alarm rate): the pixels of the predicted components that detected no group,
  over all pixels of all frames.
- **IoU**: pixels in both the predicted mask and the truth mask over the pixels in either,
  pooled over all frames (the toolkits' "mIoU" over a test set). The truth mask of a group
  is where its noise-free rendered signal reaches ``mask_fraction`` (default 0.25) of that
  group's brightest pixel; the pixels of a spot that stand out of the noise, not the PSF's
  faint tails.

NumPy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stages.scene import SceneTruth, render_points

#: Matching distance of Pd (px), as in the BasicIRSTD toolkits.
DISTANCE = 3.0
#: A group's truth mask: its rendered signal ≥ this fraction of its brightest pixel.
MASK_FRACTION = 0.25


def weighted_centroids(targets: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """Brightness-weighted centroid (row, col) of each group of sub-targets, groups in order
    of first appearance.

    Parameters
    ----------
    targets : ndarray of shape (T, 3)
        (row, col, brightness) of every sub-target.
    group_of : ndarray of shape (T,)
        Group id of each sub-target.

    Returns
    -------
    ndarray of shape (G, 2)
    """
    ids = list(dict.fromkeys(np.asarray(group_of).tolist()))
    out = np.zeros((len(ids), 2))
    for i, gid in enumerate(ids):
        t = targets[np.asarray(group_of) == gid]
        out[i] = (t[:, :2] * t[:, 2:3]).sum(0) / t[:, 2].sum()
    return out


def group_centroids(truth: SceneTruth) -> np.ndarray:
    """:func:`weighted_centroids` of a simulator frame's groups: shape (G, 2)."""
    return weighted_centroids(truth.targets, truth.target_group)


def truth_mask(truth: SceneTruth, shape: tuple[int, int], psf_sigma: float,
               fraction: float = MASK_FRACTION) -> np.ndarray:
    """Pixels (H, W) bool where some group's noise-free signal reaches ``fraction`` of that
    group's brightest pixel."""
    mask = np.zeros(shape, dtype=bool)
    radius = int(np.ceil(4 * psf_sigma)) + 1
    for gid in truth.group_ids:
        signal = render_points(truth.group_targets(int(gid)), shape, psf_sigma, radius)
        mask |= signal >= fraction * signal.max()
    return mask


def match_groups(centres: np.ndarray, groups: np.ndarray, distance: float = DISTANCE
                 ) -> np.ndarray:
    """Which predicted component detects which group.

    Parameters
    ----------
    centres : ndarray of shape (N, 2)
        Centroids (row, col) of the predicted components.
    groups : ndarray of shape (G, 2)
        Truth group centroids.

    Returns
    -------
    ndarray of shape (N,), int64
        Index of the group each component detected, −1 for a false alarm.
    """
    owner = np.full(len(centres), -1, dtype=np.int64)
    if len(centres) == 0 or len(groups) == 0:
        return owner
    d = np.hypot(*(centres[:, None, :] - groups[None, :, :]).transpose(2, 0, 1))  # (N, G)
    for flat in np.argsort(d, axis=None, kind="stable"):
        n, g = divmod(int(flat), len(groups))
        if d[n, g] > distance:
            break
        if owner[n] < 0 and g not in owner:
            owner[n] = g
    return owner


@dataclasses.dataclass
class DetectionScore:
    """Pd, Fa and IoU accumulated over frames (:meth:`add` one frame at a time)."""

    distance: float = DISTANCE
    groups: int = 0
    detected: int = 0
    false_pixels: int = 0
    false_components: int = 0
    pixels: int = 0
    intersection: int = 0
    union: int = 0
    frames: int = 0

    def add(self, centres: np.ndarray, areas: np.ndarray, groups: np.ndarray, pixels: int,
            mask: np.ndarray | None = None, truth: np.ndarray | None = None) -> None:
        """Score one frame.

        Parameters
        ----------
        centres : ndarray of shape (N, 2)
            Predicted components' centroids (row, col).
        areas : ndarray of shape (N,)
            Their areas (px).
        groups : ndarray of shape (G, 2)
            Truth group centroids (:func:`group_centroids`).
        pixels : int
            Pixels of the frame (Fa's denominator).
        mask : ndarray of shape (H, W), bool, optional
            The predicted components' pixels (without it, e.g. from blobs alone: no IoU).
        truth : ndarray of shape (H, W), bool, optional
            Truth mask (:func:`truth_mask`); needed with ``mask``.
        """
        owner = match_groups(np.asarray(centres).reshape(-1, 2), groups, self.distance)
        false = owner < 0
        self.groups += len(groups)
        self.detected += int((~false).sum())
        self.false_components += int(false.sum())
        self.false_pixels += int(np.asarray(areas)[false].sum())
        self.frames += 1
        self.pixels += int(pixels)
        if mask is not None:
            self.intersection += int((mask & truth).sum())
            self.union += int((mask | truth).sum())

    def summary(self) -> dict:
        """``Pd``, ``Fa`` (per pixel), ``IoU`` (None without masks) and the counts; None for
        a ratio of nothing."""
        pixels = self.pixels
        return {
            "frames": self.frames, "groups": self.groups, "detected": self.detected,
            "Pd": self.detected / self.groups if self.groups else None,
            "false_components": self.false_components, "false_pixels": self.false_pixels,
            "Fa": self.false_pixels / pixels if pixels else None,
            "IoU": self.intersection / self.union if self.union else None,
            "distance_px": self.distance,
        }
