"""Sub-target tracker: constant-velocity Kalman filters + Hungarian assignment.

Each track is a :class:`filterpy.kalman.KalmanFilter` with state ``[r, c, vr, vc]`` (frame
pixels, pixels per frame) observing ``[r, c]``. Per frame (one :class:`Points` message):

1. every track is predicted to the frame (``dt`` = the difference of the frames'
   ``sensor_seq``, so a lost frame is bridged);
2. the cost of pairing track i with point j is the Euclidean distance between the predicted
   position and the point (``gating="euclidean"``, gate ``gate_px``) or the squared
   Mahalanobis distance under the innovation covariance S = H P Hᵀ + R
   (``gating="mahalanobis"``, gate ``gate_mahalanobis``, default the χ²(2) 99 % quantile);
3. :func:`~stages.association.gated_assignment` pairs tracks and points (Hungarian, pairs beyond
   the gate forbidden); paired tracks are updated;
4. a track becomes confirmed (and gets its public id) after ``confirm_hits`` hits; a
   confirmed track is deleted after ``max_misses`` consecutive misses, a tentative one at
   its first miss; unpaired points start tentative tracks.

Public ids are consecutive integers in order of confirmation and never reused.

**Several sensors.** The stage keeps one :class:`PointTracker` per sensor (the messages'
``sensor``) and counts each sensor's frames with ``sensor_seq``: a sensor's tracks see only
its own points, and track ids are unique per sensor (a track is named by the message's
``sensor`` and its ``track_id``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from filterpy.common import Q_discrete_white_noise
from filterpy.kalman import KalmanFilter

from models.config import ConfigError
from stages.association import gated_assignment
from stages.base import Stage
from stages.messages import Message, Points, Track, Tracks, frame_header

GATINGS = ("mahalanobis", "euclidean")


@dataclass(frozen=True)
class TrackerConfig:
    """Options of :class:`Tracker`.

    Attributes
    ----------
    gating : str
        "mahalanobis" or "euclidean".
    gate_px : float
        Euclidean gate (px), used with ``gating="euclidean"``.
    gate_mahalanobis : float
        Gate on the squared Mahalanobis distance, used with ``gating="mahalanobis"``
        (9.21 = χ²(2) 99 %).
    confirm_hits : int
        Hits (M) that confirm a track.
    max_misses : int
        Consecutive misses (N) that delete a confirmed track.
    measurement_std : float
        Standard deviation of a point's position (px): R = σ² I.
    accel_std : float
        Standard deviation of the white-noise acceleration (px/frame²) that drives Q.
    init_velocity_std : float
        Prior standard deviation of a new track's velocity (px/frame).
    score_smoothing : float
        Weight of the newest point score in the track score (exponential moving average).
    """

    gating: str = "mahalanobis"
    gate_px: float = 1.0
    gate_mahalanobis: float = 9.21
    confirm_hits: int = 3
    max_misses: int = 3
    measurement_std: float = 0.1
    accel_std: float = 0.02
    init_velocity_std: float = 0.5
    score_smoothing: float = 0.3

    def __post_init__(self) -> None:
        if self.gating not in GATINGS:
            raise ValueError(f"unknown gating {self.gating!r}; expected one of {GATINGS}")
        if self.confirm_hits < 1 or self.max_misses < 1:
            raise ValueError("confirm_hits and max_misses must be >= 1")
        for name in ("gate_px", "gate_mahalanobis", "measurement_std", "init_velocity_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.accel_std < 0 or not 0 < self.score_smoothing <= 1:
            raise ValueError("accel_std must be >= 0 and 0 < score_smoothing <= 1")


def constant_velocity_filter(
    row: float, col: float, config: TrackerConfig
) -> KalmanFilter:
    """A KalmanFilter at rest at (row, col), ready for :meth:`KalmanFilter.predict`."""
    kf = KalmanFilter(dim_x=4, dim_z=2)
    kf.x = np.array([row, col, 0.0, 0.0])  # state [r, c, vr, vc]: px, px/frame
    kf.F = transition(1.0)  # (4, 4) x_{k+1} = F x_k
    kf.H = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # (2, 4) observes the position
    kf.R = np.eye(2) * config.measurement_std**2  # (2, 2) point position noise, px²
    pos_var, vel_var = config.measurement_std**2, config.init_velocity_std**2
    kf.P = np.diag([pos_var, pos_var, vel_var, vel_var])  # (4, 4) prior covariance
    return kf


def transition(dt: float) -> np.ndarray:
    """Constant-velocity transition F (4, 4) over ``dt`` frames for state [r, c, vr, vc]."""
    f = np.eye(4)
    f[0, 2] = f[1, 3] = dt
    return f


def process_noise(dt: float, accel_std: float) -> np.ndarray:
    """White-noise-acceleration Q (4, 4) over ``dt`` frames for state [r, c, vr, vc]."""
    return Q_discrete_white_noise(
        dim=2, dt=dt, var=accel_std**2, block_size=2, order_by_dim=False
    )


@dataclass
class _KalmanTrack:
    kf: KalmanFilter
    score: float
    born: int  # seq of the first point
    hits: int = 1
    misses: int = 0
    track_id: int = -1  # public id, set at confirmation

    @property
    def confirmed(self) -> bool:
        return self.track_id >= 0


class PointTracker:
    """The tracking state machine on numpy arrays (no messages); see the module docstring."""

    def __init__(self, config: TrackerConfig = TrackerConfig()) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget every track (ids restart at 0)."""
        self._tracks: list[_KalmanTrack] = []
        self._next_id = 0
        self._last_seq: int | None = None

    def _cost(self, points: np.ndarray) -> tuple[np.ndarray, float]:
        cfg = self.config
        pred = np.array([t.kf.x[:2] for t in self._tracks]).reshape(-1, 2)
        diff = points[None, :, :2] - pred[:, None, :]  # (T, N, 2)
        if cfg.gating == "euclidean":
            return np.linalg.norm(diff, axis=-1), cfg.gate_px
        s_inv = np.array([np.linalg.inv(t.kf.H @ t.kf.P @ t.kf.H.T + t.kf.R) for t in self._tracks])
        d2 = np.einsum("tni,tij,tnj->tn", diff, s_inv.reshape(-1, 2, 2), diff)
        return d2, cfg.gate_mahalanobis

    def step(self, seq: int, points: np.ndarray) -> np.ndarray:
        """Process the points of frame ``seq``.

        Parameters
        ----------
        seq : int
            Frame number; must increase from call to call.
        points : ndarray of shape (N, 3)
            (row, col, score) in frame pixels.

        Returns
        -------
        ndarray of shape (K, 7), float64
            Confirmed tracks alive after this frame (coasting ones included), sorted by id:
            (track_id, row, col, vrow, vcol, score, age) with age = seq − birth seq.
        """
        cfg = self.config
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if self._last_seq is not None and seq <= self._last_seq:
            raise ValueError(f"seq must increase: got {seq} after {self._last_seq}")
        dt = 1.0 if self._last_seq is None else float(seq - self._last_seq)
        self._last_seq = seq
        f, q = transition(dt), process_noise(dt, cfg.accel_std)
        for track in self._tracks:
            track.kf.predict(F=f, Q=q)
        cost, gate = self._cost(points)
        pairs, free_tracks, free_points = gated_assignment(cost, gate)
        alpha = cfg.score_smoothing
        for ti, pj in pairs:
            track = self._tracks[ti]
            track.kf.update(points[pj, :2])
            track.score = (1 - alpha) * track.score + alpha * points[pj, 2]
            track.hits += 1
            track.misses = 0
        survivors = [self._tracks[i] for i in pairs[:, 0]]
        for ti in free_tracks:
            track = self._tracks[ti]
            track.misses += 1
            if track.confirmed and track.misses < cfg.max_misses:
                survivors.append(track)
        for pj in free_points:
            kf = constant_velocity_filter(points[pj, 0], points[pj, 1], cfg)
            survivors.append(_KalmanTrack(kf=kf, score=float(points[pj, 2]), born=seq))
        for track in survivors:
            if not track.confirmed and track.hits >= cfg.confirm_hits:
                track.track_id = self._next_id
                self._next_id += 1
        self._tracks = survivors
        rows = [
            [t.track_id, *t.kf.x, t.score, seq - t.born] for t in survivors if t.confirmed
        ]
        out = np.array(rows, dtype=np.float64).reshape(-1, 7)
        return out[np.argsort(out[:, 0], kind="stable")]


class Tracker(Stage):
    """Points → confirmed sub-target tracks, one :class:`Tracks` message per frame; one
    :class:`PointTracker` per sensor (see the module docstring)."""

    Config = TrackerConfig
    INPUTS = ("points",)
    OUTPUT = "tracks"

    def __init__(self, config: TrackerConfig | None = None) -> None:
        super().__init__(config)
        #: sensor -> its tracker, made at the sensor's first frame
        self.cores: defaultdict[int, PointTracker] = defaultdict(
            lambda: PointTracker(self.config))

    def reset(self) -> None:
        """Forget every track of every sensor."""
        self.cores.clear()

    def process(self, msg: Message) -> Iterable[Message]:
        if not isinstance(msg, Points):
            raise ConfigError(
                f"the tracker takes Points messages, got {type(msg).__name__}; "
                "subscribe it to the points topic"
            )
        pts = np.array([[p.row, p.col, p.score] for p in msg.points]).reshape(-1, 3)
        tracks = tuple(
            Track(
                track_id=int(tid), row=float(r), col=float(c), vrow=float(vr), vcol=float(vc),
                score=float(s), age=int(age),
            )
            for tid, r, c, vr, vc, s, age in self.cores[msg.sensor].step(msg.sensor_seq, pts)
        )
        return [Tracks(**frame_header(msg), tracks=tracks)]
