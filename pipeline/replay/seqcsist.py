"""Replaying a SeqCSIST dataset (official layout or compact npz) and scoring it with CSO-mAP.

A SeqCSIST frame is already an 11×11 patch around one group of closely-spaced targets, so
detection and cropping are bypassed: :class:`DatasetWindowsSource` turns each trajectory into
one :class:`~stages.messages.Windows` message (``seq`` = trajectory index k) holding its
windows t = 2 … T−3 (frames t−2 … t+2, the SeqCSIST evaluation protocol of
:mod:`models.protocol`), each with origin (0, 0), ``frame_index`` t, ``blob_id`` k (the
trajectory is the group's track) and that frame's targets as truth. The chain's unmixer and
extractor turn them into points (patch = frame coordinates), and :class:`CsoMapScorer` scores
the points of every window against its truth with :func:`models.metric.cso_map` (points
mode: the numbers equal ``python -m models evaluate --mode points`` for the same model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from models.config import ConfigError
from models.metric import cso_map
from models.protocol import eval_windows
from sim import load_dataset
from sim.dataset import DatasetError, SeqDataset
from stages.base import Source, Stage
from stages.cropper import SeqJoin
from stages.messages import Message, Points, TruthPoint, WindowInfo, Windows


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Options of :class:`DatasetWindowsSource`.

    Attributes
    ----------
    path : str
        A compact ``.npz`` split, a split folder (``image/`` + ``annotation/``) or a dataset
        root (then ``split`` is required).
    split : str or None
        Split of a dataset root (e.g. ``test``).
    fps : float
        Frame rate defining ``t_source_ns`` (trajectory k starts at k·T / fps).
    """

    path: str
    split: str | None = None
    fps: float = 25.0


class DatasetWindowsSource(Source):
    """One Windows message per trajectory of a SeqCSIST split (see the module docstring)."""

    Config = DatasetConfig
    OUTPUT = "windows"

    def __init__(self, config: DatasetConfig) -> None:
        super().__init__(config)
        self.dataset: SeqDataset | None = None

    def start(self) -> None:
        try:
            self.dataset = load_dataset(self.config.path, self.config.split)
        except DatasetError as exc:
            raise ConfigError(str(exc)) from exc

    def __iter__(self) -> Iterator[Message]:
        if self.dataset is None:
            self.start()
        ds = self.dataset
        windows, frame_index, frames = eval_windows(ds)
        per_traj = len(frames) // ds.n_trajectories
        for k in range(ds.n_trajectories):
            rows = slice(k * per_traj, (k + 1) * per_traj)
            infos = tuple(
                WindowInfo(blob_id=k, origin_row=0, origin_col=0, frame_index=int(t),
                           truth=tuple(TruthPoint(group=k, row=float(r), col=float(c),
                                                  brightness=float(b))
                                       for r, c, b in ds.frame_targets(int(f))))
                for f, t in zip(frames[rows], frame_index[rows], strict=True)
            )
            yield Windows(seq=k, t_source_ns=round(k * ds.traj_len * 1e9 / self.config.fps),
                          windows=infos, patches=np.ascontiguousarray(windows[rows]))


class CsoMapScorer(Stage):
    """Sink: CSO-mAP (points mode) of the points of every window against its truth.

    Joins Windows and Points by ``seq``; the points of window i are those whose ``window_id``
    is i.
    """

    INPUTS = ("windows", "points")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.join = SeqJoin((Windows, Points), max_pending=1 << 20)
        self.detections: list[np.ndarray] = []
        self.truths: list[np.ndarray] = []

    def process(self, msg: Message) -> Iterable[Message]:
        parts = self.join.add(msg)
        if parts is None:
            return ()
        by_window: dict[int, list[tuple[float, float, float]]] = {}
        for p in parts[Points].points:
            by_window.setdefault(p.window_id, []).append((p.row, p.col, p.score))
        for index, info in enumerate(parts[Windows].windows):
            self.detections.append(np.array(by_window.get(index, []),
                                            dtype=np.float64).reshape(-1, 3))
            self.truths.append(np.array([(t.row, t.col, t.brightness) for t in info.truth],
                                        dtype=np.float64).reshape(-1, 3))
        return ()

    def summary(self) -> dict[str, Any]:
        return {"windows": len(self.truths),
                "points": int(sum(len(d) for d in self.detections)),
                "targets": int(sum(len(t) for t in self.truths)),
                "cso_map": cso_map(self.detections, self.truths)}
