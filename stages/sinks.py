"""Sinks: a console summary, a JSON-lines writer and annotated overlay frames.

Each sink pairs the messages it needs by ``seq`` (:class:`~stages.cropper.SeqJoin`); the
points and tracks of frame t arrive at least 2 frames after frame t itself (the cropper's
window delay), so frames wait in the join until their results come.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from stages.base import Stage
from stages.cropper import SeqJoin
from stages.messages import (
    PATCH,
    Blob,
    Blobs,
    Frame,
    Message,
    Point,
    Points,
    Track,
    Tracks,
    WindowInfo,
    Windows,
)

# ---------------------------------------------------------------------------------------------
# Console summary


@dataclass(frozen=True)
class ConsoleConfig:
    """Options of :class:`ConsoleSummary`.

    Attributes
    ----------
    every : int
        One line per this many frames.
    max_pending : int
        Frames held in the join while their messages arrive.
    """

    every: int = 25
    max_pending: int = 64

    def __post_init__(self) -> None:
        if self.every < 1 or self.max_pending < 1:
            raise ValueError("every and max_pending must be >= 1")


def wall_time_ns(msg: Message) -> int | None:
    """Latest runner timestamp of a message (Unix ns), None outside the runner."""
    return max(msg.stamps.values()) if msg.stamps else None


class ConsoleSummary(Stage):
    """One line per ``every`` frames on stderr: frames, fps, groups, points and tracks.

    ``fps`` is the throughput between the runner's timestamps of the first and the last
    frame of the block (``-`` when messages carry none, e.g. in a single-process chain; the
    stage never reads the clock itself). groups, points and tracks are means per frame over
    the block (groups = windows, i.e. blob tracks that were unmixed).

    Parameters
    ----------
    config : ConsoleConfig, optional
    stream : text stream, optional
        Where the lines go (default ``sys.stderr``).
    """

    Config = ConsoleConfig
    INPUTS = ("windows", "points", "tracks")
    OUTPUT = None

    def __init__(self, config: ConsoleConfig | None = None, stream: TextIO | None = None) -> None:
        super().__init__(config)
        self.stream = stream if stream is not None else sys.stderr
        self.join = SeqJoin((Windows, Points, Tracks), self.config.max_pending)
        self.frames = 0
        self._block: list[tuple[int, int, int, int | None]] = []
        self._last_time: int | None = None

    def process(self, msg: Message) -> Iterable[Message]:
        parts = self.join.add(msg)
        if parts is None:
            return ()
        tracks = parts[Tracks]
        self.frames += 1
        self._block.append(
            (
                len(parts[Windows].windows),
                len(parts[Points].points),
                len(tracks.tracks),
                wall_time_ns(tracks),
            )
        )
        if len(self._block) == self.config.every:
            self._write()
        return ()

    def flush(self) -> Iterable[Message]:
        if self._block:
            self._write()
        return ()

    def _write(self) -> None:
        groups, points, tracks, times = zip(*self._block, strict=True)
        start = self._last_time if self._last_time is not None else times[0]
        end = times[-1]
        frames = len(times) if self._last_time is not None else len(times) - 1
        if start is not None and end is not None and end > start and frames > 0:
            fps = f"{frames * 1e9 / (end - start):.1f}"
        else:
            fps = "-"
        self.stream.write(
            f"frames {self.frames} | fps {fps} | groups {np.mean(groups):.1f} | "
            f"points {np.mean(points):.1f} | tracks {np.mean(tracks):.1f}\n"
        )
        self.stream.flush()
        self._last_time = end
        self._block = []


# ---------------------------------------------------------------------------------------------
# JSON lines


@dataclass(frozen=True)
class JsonLinesConfig:
    """Options of :class:`JsonLinesWriter`.

    Attributes
    ----------
    path : str
        Output file (created with its folder; overwritten).
    decimals : int
        Decimals of positions and velocities (3 = 0.001 px); scores get 2.
    max_pending : int
        Frames held in the join while their messages arrive.
    """

    path: str = "runs/live/points.jsonl"
    decimals: int = 3
    max_pending: int = 64

    def __post_init__(self) -> None:
        if self.decimals < 0 or self.max_pending < 1:
            raise ValueError("decimals must be >= 0 and max_pending >= 1")


def frame_record(points: Points, tracks: Tracks, decimals: int = 3) -> dict:
    """The JSON-lines record of one frame (plain Python types, rounded).

    Returns
    -------
    dict
        ``{"seq", "t_source_ns", "points": [{"row", "col", "score", "track_id"}],
        "tracks": [{"id", "row", "col", "vrow", "vcol", "score", "age"}]}``.
    """

    def pos(v: float) -> float:
        return round(float(v), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0

    def score(v: float) -> float:
        return round(float(v), 2) + 0.0

    return {
        "seq": points.seq,
        "t_source_ns": points.t_source_ns,
        "points": [
            {"row": pos(p.row), "col": pos(p.col), "score": score(p.score), "track_id": p.track_id}
            for p in points.points
        ],
        "tracks": [
            {
                "id": t.track_id,
                "row": pos(t.row),
                "col": pos(t.col),
                "vrow": pos(t.vrow),
                "vcol": pos(t.vcol),
                "score": score(t.score),
                "age": t.age,
            }
            for t in tracks.tracks
        ],
    }


class JsonLinesWriter(Stage):
    """One JSON line per frame with its points and tracks (sorted keys: byte-reproducible)."""

    Config = JsonLinesConfig
    INPUTS = ("points", "tracks")
    OUTPUT = None

    def __init__(self, config: JsonLinesConfig | None = None) -> None:
        super().__init__(config)
        self.join = SeqJoin((Points, Tracks), self.config.max_pending)
        self._file: TextIO | None = None

    def start(self) -> None:
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")

    def process(self, msg: Message) -> Iterable[Message]:
        parts = self.join.add(msg)
        if parts is None:
            return ()
        if self._file is None:
            self.start()
        record = frame_record(parts[Points], parts[Tracks], self.config.decimals)
        self._file.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
        return ()

    def flush(self) -> Iterable[Message]:
        if self._file is not None:
            self._file.flush()
        return ()

    def stop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ---------------------------------------------------------------------------------------------
# Overlay frames

BLOB_COLOUR = (0, 200, 255)  # BGR: orange boxes around blobs
WINDOW_COLOUR = (255, 160, 0)  # blue: the 11×11 crop of each window
POINT_COLOUR = (0, 0, 255)  # red crosses: unmixed sub-targets
TRACK_COLOUR = (0, 255, 0)  # green ids: confirmed tracks
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel positions


@dataclass(frozen=True)
class OverlayConfig:
    """Options of :class:`OverlayWriter`.

    Attributes
    ----------
    directory : str
        Folder of the PNG files (``overlay_{seq:06d}.png``).
    png_every : int
        Write every n-th scored frame as PNG (0 = no PNG).
    video : str or None
        Video file (.avi, MJPG) of every frame; None = no video.
    video_fps : float
        Frame rate written into the video.
    scale : int
        Upscaling factor (nearest neighbour) so that sub-pixel marks are visible.
    low_percentile, high_percentile : float
        Contrast stretch: these percentiles of the frame map to 0 and 255.
    gamma : float
        Gamma of the stretch (see :func:`stretch_to_uint8`).
    max_pending : int
        Frames held in the join while their messages arrive.
    """

    directory: str = "runs/live/overlay"
    png_every: int = 25
    video: str | None = None
    video_fps: float = 25.0
    scale: int = 3
    low_percentile: float = 1.0
    high_percentile: float = 99.99
    gamma: float = 0.5
    max_pending: int = 64

    def __post_init__(self) -> None:
        if self.png_every < 0 or self.scale < 1 or self.max_pending < 1 or self.video_fps <= 0:
            raise ValueError("png_every >= 0, scale >= 1, max_pending >= 1, video_fps > 0")
        if not 0 <= self.low_percentile < self.high_percentile <= 100 or self.gamma <= 0:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100, and gamma > 0")


def stretch_to_uint8(
    image: np.ndarray, low: float = 1.0, high: float = 99.99, gamma: float = 0.5
) -> np.ndarray:
    """Contrast stretch to uint8 (H, W): the ``low``..``high`` percentiles map to 0..1, then
    ``x ** gamma`` (γ < 1 lifts the faint background and clutter while bright targets keep
    their shape), then 0..255."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [low, high])
    unit = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return np.rint(255.0 * unit**gamma).astype(np.uint8)


def _to_canvas(row: float, col: float, scale: int) -> tuple[int, int]:
    """(x, y) fixed-point canvas coordinates of a frame position (pixel-centre convention)."""
    factor = 1 << _SHIFT
    x = ((col + 0.5) * scale - 0.5) * factor
    y = ((row + 0.5) * scale - 0.5) * factor
    return round(x), round(y)


def draw_overlay(
    image: np.ndarray,
    blobs: Sequence[Blob] = (),
    windows: Sequence[WindowInfo] = (),
    points: Sequence[Point] = (),
    tracks: Sequence[Track] = (),
    scale: int = 3,
    percentiles: tuple[float, float] = (1.0, 99.99),
    gamma: float = 0.5,
) -> np.ndarray:
    """An annotated, upscaled BGR picture of one frame.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Raw frame.
    blobs, windows, points, tracks
        What to draw, all in frame pixels: blob boxes (orange), window crops (blue), point
        crosses (red), track ids (green).
    scale : int
        Upscaling factor.
    percentiles : tuple of float
        Contrast stretch percentiles.
    gamma : float
        Gamma of the stretch.

    Returns
    -------
    ndarray of shape (H·scale, W·scale, 3), uint8 (BGR).
    """
    grey = stretch_to_uint8(image, *percentiles, gamma)
    big = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    canvas = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    for b in blobs:
        half = (np.sqrt(b.area) / 2 + 1.0) * scale
        x, y = _to_canvas(b.row, b.col, scale)
        d = round(half * (1 << _SHIFT))
        cv2.rectangle(canvas, (x - d, y - d), (x + d, y + d), BLOB_COLOUR, 1, cv2.LINE_8, _SHIFT)
    for w in windows:
        top = (w.origin_col * scale, w.origin_row * scale)
        bottom = ((w.origin_col + PATCH) * scale - 1, (w.origin_row + PATCH) * scale - 1)
        cv2.rectangle(canvas, top, bottom, WINDOW_COLOUR, 1)
    arm = max(scale, 2) * (1 << _SHIFT)
    for p in points:
        x, y = _to_canvas(p.row, p.col, scale)
        cv2.line(canvas, (x - arm, y), (x + arm, y), POINT_COLOUR, 1, cv2.LINE_8, _SHIFT)
        cv2.line(canvas, (x, y - arm), (x, y + arm), POINT_COLOUR, 1, cv2.LINE_8, _SHIFT)
    for (row, col), ids in label_groups(tracks).items():
        x, y = _to_canvas(row, col, scale)
        at = (x >> _SHIFT) + 2 * scale, (y >> _SHIFT) - 2 * scale
        text = ",".join(map(str, ids))
        cv2.putText(canvas, text, at, cv2.FONT_HERSHEY_PLAIN, 0.8, TRACK_COLOUR, 1)
    return canvas


def label_groups(tracks: Sequence[Track], radius: float = 2.0) -> dict[tuple, list[int]]:
    """Track ids gathered under one label per cluster, so that the ids of the sub-targets of
    one CSO group (a fraction of a pixel apart) do not print over each other.

    Returns
    -------
    dict mapping the (row, col) of the cluster's first track (lowest id) to its sorted ids;
    a track joins the first cluster whose anchor is within ``radius`` px.
    """
    groups: dict[tuple, list[int]] = {}
    for t in sorted(tracks, key=lambda t: t.track_id):
        anchor = next(
            (a for a in groups if np.hypot(a[0] - t.row, a[1] - t.col) <= radius), None
        )
        groups.setdefault(anchor or (t.row, t.col), []).append(t.track_id)
    return groups


class OverlayWriter(Stage):
    """Annotated frames as PNG files (every n-th frame) and/or an MJPG video (every frame)."""

    Config = OverlayConfig
    INPUTS = ("frames", "blobs", "windows", "points", "tracks")
    OUTPUT = None

    def __init__(self, config: OverlayConfig | None = None) -> None:
        super().__init__(config)
        self.join = SeqJoin((Frame, Blobs, Windows, Points, Tracks), self.config.max_pending)
        self._video: cv2.VideoWriter | None = None
        self.frames = 0
        #: Paths of the PNG files written so far.
        self.written: list[Path] = []

    def process(self, msg: Message) -> Iterable[Message]:
        parts = self.join.add(msg)
        if parts is None:
            return ()
        cfg = self.config
        frame = parts[Frame]
        canvas = draw_overlay(
            frame.image,
            parts[Blobs].blobs,
            parts[Windows].windows,
            parts[Points].points,
            parts[Tracks].tracks,
            cfg.scale,
            (cfg.low_percentile, cfg.high_percentile),
            cfg.gamma,
        )
        if cfg.png_every and self.frames % cfg.png_every == 0:
            path = Path(cfg.directory) / f"overlay_{frame.seq:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), canvas):
                raise OSError(f"cannot write {path}; check the overlay directory")
            self.written.append(path)
        if cfg.video is not None:
            self._write_video(canvas)
        self.frames += 1
        return ()

    def _write_video(self, canvas: np.ndarray) -> None:
        if self._video is None:
            path = Path(self.config.video)
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (canvas.shape[1], canvas.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*"MJPG")
            self._video = cv2.VideoWriter(str(path), fourcc, self.config.video_fps, size)
            if not self._video.isOpened():
                raise OSError(f"cannot open video {path} for writing; use an .avi file name")
        self._video.write(canvas)

    def stop(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
