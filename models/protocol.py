"""The SeqCSIST evaluation protocol: which frames are scored, their windows and their truth.

Single process, trajectory-aligned (docs/reference.md §1.5, §3). For every trajectory of T
frames the middle frames t = 2 … T−3 are evaluated (2 … 17 for T = 20, i.e. 16 windows per
trajectory, 12 000 frames on a 750-trajectory test split); window t holds frames t−2 … t+2 of
the same trajectory and its output map is scored against the truth of frame t.

NumPy only: the live chain's dataset replay uses the same protocol without importing torch.
"""

from __future__ import annotations

import numpy as np

from models.metric import grid_detections, match_detections, summarize
from models.snap import snap_map
from sim.dataset import SeqDataset
from sim.geometry import WINDOW
from sim.render import gt_map, splat_map

#: Middle frame offset inside a window: window t spans frames t−2 … t+2.
HALF = WINDOW // 2


def eval_frames(dataset: SeqDataset) -> tuple[np.ndarray, np.ndarray]:
    """Evaluated frames: dataset indices (N,) and in-trajectory indices t (N,), both int64."""
    t_len = dataset.traj_len
    if t_len < WINDOW:
        raise ValueError(
            f"trajectories of {t_len} frames are shorter than the {WINDOW}-frame window"
        )
    middles = np.arange(HALF, t_len - HALF, dtype=np.int64)
    starts = np.arange(dataset.n_trajectories, dtype=np.int64) * t_len
    frames = (starts[:, None] + middles[None, :]).ravel()
    return frames, np.tile(middles, dataset.n_trajectories)


def eval_windows(dataset: SeqDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of the evaluated frames.

    Returns
    -------
    windows : ndarray of shape (N, 5, 11, 11), float32
        Frames t−2 … t+2 of the trajectory, raw grey levels.
    frame_index : ndarray of shape (N,), int64
        Index t of the middle frame within its trajectory.
    frames : ndarray of shape (N,), int64
        Dataset index of the middle frame.
    """
    frames, frame_index = eval_frames(dataset)
    offsets = np.arange(-HALF, HALF + 1)
    windows = dataset.images[frames[:, None] + offsets[None, :]].astype(np.float32)
    return windows, frame_index, frames


def ground_truths(dataset: SeqDataset, frames: np.ndarray) -> list[np.ndarray]:
    """Targets (m_i, 3) = (row, col, brightness) of the given dataset frames."""
    return [dataset.frame_targets(int(f)) for f in frames]


def grid_oracle(dataset: SeqDataset) -> dict:
    """CSO-mAP of the exact GT maps in grid mode on the evaluated frames of ``dataset``.

    The GT map snaps each target to its nearest HR cell, so only grid quantisation is scored:
    the reference level for grid-mode output (docs/reference.md §3.2; a model whose scores
    rank well-placed cells first can exceed it, since all GT cells here share similar
    brightness scores).
    """
    return _rendered_map_score(gt_map, dataset)


def splat_oracle(dataset: SeqDataset) -> dict:
    """CSO-mAP of the exact bilinear-splat maps (:func:`sim.render.splat_map`, the networks'
    training target) in grid mode on the evaluated frames: what a network that reproduced its
    target perfectly would score on the grid (docs/reference.md §9.1)."""
    return _rendered_map_score(splat_map, dataset)


def _rendered_map_score(render, dataset: SeqDataset) -> dict:
    """CSO-mAP in grid mode of ``render(targets (N, K, 3)) -> maps (N, 33, 33)`` applied to the
    truth of the evaluated frames."""
    frames, _ = eval_frames(dataset)
    maps = render(dataset.targets[frames])
    return summarize(match_detections(grid_detections(maps), ground_truths(dataset, frames)))


def snapped_oracle(dataset: SeqDataset) -> dict:
    """CSO-mAP of the exact GT points snapped to the grid (:mod:`models.snap`) on the evaluated
    frames: the ceiling of ``snapped`` mode, and of any one-detection-per-target grid output
    that ranks well-placed nodes first, and what a grid head trained on
    :func:`~models.snap.snap_map` would score if it reproduced its target."""
    return _rendered_map_score(snap_map, dataset)
