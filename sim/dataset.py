"""In-memory SeqCSIST dataset and the compact single-file (npz) format.

A split is a stack of frames in trajectory order: trajectory k is frames
k·traj_len … k·traj_len + traj_len − 1 (docs/reference.md §1.5).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.background_level import ring_levels
from sim.families import Family, as_families, generate_trajectories
from sim.geometry import SIGMA
from sim.render import UINT8_MAX, gt_map, render_uint8
from sim.trajectory import TrajectoryRules

NPZ_VERSION = 1


class DatasetError(ValueError):
    """A dataset file or folder is malformed; the message names the problem and the fix."""


@dataclass
class SeqDataset:
    """One split of frames with their targets.

    Attributes
    ----------
    images : ndarray of shape (N, 11, 11), uint8
        LR frames in raw grey levels (float32 after :meth:`background_subtracted`).
    targets : ndarray of shape (N, K_max, 3), float64
        (row, col, brightness) per target (xc = row, yc = col); NaN rows are padding.
    traj_len : int
        Frames per trajectory; N must be a multiple of it.
    sigma : float
        PSF standard deviation in pixels.
    levels : ndarray of shape (n_trajectories,), float32, or None
        Background level subtracted from each trajectory (:meth:`background_subtracted`);
        None: nothing was subtracted.
    """

    images: np.ndarray
    targets: np.ndarray
    traj_len: int = 20
    sigma: float = SIGMA
    levels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 3:
            raise DatasetError(f"images must be (N, H, W), got shape {self.images.shape}")
        if len(self.images) != len(self.targets):
            raise DatasetError(
                f"{len(self.images)} images but {len(self.targets)} target lists"
            )
        if len(self.images) % self.traj_len:
            raise DatasetError(
                f"{len(self.images)} frames is not a multiple of the trajectory length "
                f"{self.traj_len}; every trajectory must have all its frames"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_trajectories(self) -> int:
        return len(self.images) // self.traj_len

    @property
    def counts(self) -> np.ndarray:
        """Number of targets per frame: shape (N,)."""
        return np.all(np.isfinite(self.targets), axis=-1).sum(axis=-1)

    def frame_targets(self, i: int) -> np.ndarray:
        """Targets of frame i without padding: shape (K, 3)."""
        t = self.targets[i]
        return t[np.all(np.isfinite(t), axis=-1)]

    def gt_maps(self) -> np.ndarray:
        """Ground-truth HR maps of all frames: shape (N, 33, 33), float32."""
        return gt_map(self.targets)

    def trajectory_images(self) -> np.ndarray:
        """Images grouped by trajectory: shape (n_trajectories, traj_len, H, W)."""
        return self.images.reshape(self.n_trajectories, self.traj_len, *self.images.shape[1:])

    def trajectory_saturation(self) -> np.ndarray:
        """Level at which each trajectory's pixels clip, shape (n_trajectories,), float64:
        the uint8 maximum 255, minus the background level subtracted from the trajectory. The
        sub-pixel extractor leaves pixels at that level out of its fit (they hold less than
        the targets put there)."""
        levels = np.zeros(self.n_trajectories) if self.levels is None else self.levels
        return UINT8_MAX - np.asarray(levels, dtype=np.float64)

    def trajectory_targets(self) -> np.ndarray:
        """Targets grouped by trajectory: shape (n_trajectories, traj_len, K_max, 3)."""
        return self.targets.reshape(self.n_trajectories, self.traj_len, *self.targets.shape[1:])

    def background_subtracted(self) -> SeqDataset:
        """A new dataset whose images (float32) have each trajectory's background level
        (:func:`sim.background_level.ring_levels` over its frames) subtracted.

        The live cropper subtracts the same estimate over each 5-frame window; over a whole
        trajectory of a static background the two differ only by the median's noise. Clean
        and noise-only sets are left unchanged (their level is 0, or 1 on some σ = 5
        trajectories)."""
        trajectories = self.trajectory_images().astype(np.float32)
        levels = ring_levels(trajectories)
        trajectories -= levels[:, None, None, None]
        before = np.zeros_like(levels) if self.levels is None else self.levels
        return SeqDataset(trajectories.reshape(self.images.shape), self.targets, self.traj_len,
                          self.sigma, before + levels)

    def subset(self, trajectories) -> SeqDataset:
        """A new dataset holding the given trajectory indices (in that order)."""
        idx = np.asarray(trajectories, dtype=np.int64)
        return SeqDataset(
            self.trajectory_images()[idx].reshape(-1, *self.images.shape[1:]),
            self.trajectory_targets()[idx].reshape(-1, *self.targets.shape[1:]),
            self.traj_len,
            self.sigma,
            None if self.levels is None else self.levels[idx],
        )


def simulate(
    n_trajectories: int,
    seed: int,
    rules: TrajectoryRules | Sequence[Family] | None = None,
    noise_sigma: float = 0.0,
    backgrounds: np.ndarray | None = None,
    sigma: float = SIGMA,
    gain: float = 0.0,
) -> SeqDataset:
    """Generate a split: one rule set (default the SeqCSIST rules) or a mixture of scene
    families (:mod:`sim.families`), rendered at PSF std ``sigma`` px.

    Parameters
    ----------
    backgrounds : ndarray of shape (M, H, W), optional
        Background patches in grey levels; trajectory i uses backgrounds[j] for a random j
        (the same patch for all its frames).
    gain : float
        Grey levels per photo-electron of the shot noise (0: none; :func:`render_uint8`).
    """
    families = as_families(rules)
    traj = generate_trajectories(n_trajectories, seed, families, sigma)  # (n, T, K, 3)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(n_trajectories + 1)[-1])
    bg = None
    if backgrounds is not None:
        pick = rng.integers(len(backgrounds), size=n_trajectories)
        bg = np.asarray(backgrounds, dtype=np.float64)[pick][:, None]  # (n, 1, H, W)
    patch = families[0].rules.patch
    images = render_uint8(traj, noise_sigma=noise_sigma, background=bg, rng=rng, patch=patch,
                          sigma=sigma, gain=gain)
    n, t = traj.shape[:2]
    return SeqDataset(
        images.reshape(n * t, patch, patch),
        traj.reshape(n * t, *traj.shape[2:]),
        traj_len=t,
        sigma=sigma,
    )


def save_npz(path: str | Path, ds: SeqDataset) -> None:
    """Write the compact format: images, NaN-padded targets, trajectory ids, metadata."""
    np.savez_compressed(
        path,
        images=ds.images,
        targets=ds.targets,
        traj_ids=np.repeat(np.arange(ds.n_trajectories), ds.traj_len),
        traj_len=np.int64(ds.traj_len),
        sigma=np.float64(ds.sigma),
        version=np.int64(NPZ_VERSION),
    )


def load_npz(path: str | Path) -> SeqDataset:
    """Read the compact format written by :func:`save_npz`."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: holds a single array, not a compact SeqCSIST .npz file")
        with z:
            missing = {"images", "targets", "traj_len"} - set(z.files)
            if missing:
                raise DatasetError(
                    f"{path}: not a compact SeqCSIST file (missing {sorted(missing)}); "
                    "write it with `python -m sim generate --format npz`"
                )
            try:
                return SeqDataset(
                    z["images"], z["targets"], int(z["traj_len"]), float(z.get("sigma", SIGMA))
                )
            except DatasetError as exc:
                raise DatasetError(f"{path}: {exc}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read compact dataset ({exc})") from exc
