"""Sinks: a console summary, a JSON-lines writer and annotated overlay frames
(drawn by :mod:`stages.overlay`).

Each sink pairs the messages it needs by ``seq`` (:class:`~stages.base.SeqJoin`); the
points and tracks of frame t arrive at least 2 frames after frame t itself (the cropper's
window delay), so frames wait in the join until their results come.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from sim.geometry import PATCH
from stages.base import SeqJoin, Stage
from stages.messages import Blobs, Frame, Message, Points, Tracks, Windows, frame_header
from stages.overlay import draw_overlay

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
        ``{"seq", "t_source_ns", "sensor", "sensor_seq", "points": [{"row", "col", "score",
        "window_id"}], "tracks": [{"id", "row", "col", "vrow", "vcol", "score", "age"}]}``
        (a track is named by ``sensor`` and ``id``).
    """

    def pos(v: float) -> float:
        return round(float(v), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0

    def score(v: float) -> float:
        return round(float(v), 2) + 0.0

    return {
        **frame_header(points),
        "points": [
            {"row": pos(p.row), "col": pos(p.col), "score": score(p.score),
             "window_id": p.window_id}
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
        Gamma of the stretch (see :func:`stages.overlay.stretch_to_uint8`).
    tiles : int
        Windows shown zoomed beside the frame (slots; 0 = none).
    tile_px : int
        Pixels per side of the centre of a window's crop shown in its tile (1..11).
    zoom : int
        Upscaling factor of those tiles.
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
    tiles: int = 6
    tile_px: int = 5
    zoom: int = 44
    max_pending: int = 64

    def __post_init__(self) -> None:
        if self.png_every < 0 or self.scale < 1 or self.max_pending < 1 or self.video_fps <= 0:
            raise ValueError("png_every >= 0, scale >= 1, max_pending >= 1, video_fps > 0")
        if self.tiles < 0 or self.zoom < 1 or not 1 <= self.tile_px <= PATCH:
            raise ValueError(f"tiles must be >= 0, zoom >= 1 and tile_px in 1..{PATCH}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100 or self.gamma <= 0:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100, and gamma > 0")


class OverlayWriter(Stage):
    """Annotated frames as PNG files (every n-th frame) and/or an MJPG video (every frame).

    A frame is drawn only when it is written (PNG or video). In its own process it receives
    the messages still encoded (``RAW_INPUT``) and decodes only those of the frames it draws:
    one frame in 25 by default, instead of five messages a frame.
    """

    Config = OverlayConfig
    INPUTS = ("frames", "blobs", "windows", "points", "tracks")
    OUTPUT = None
    RAW_INPUT = True

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
        png = bool(cfg.png_every) and self.frames % cfg.png_every == 0
        self.frames += 1
        if not png and cfg.video is None:
            return ()
        parts = {kind: part.decode() if hasattr(part, "message_type") else part
                 for kind, part in parts.items()}
        frame = parts[Frame]
        canvas = draw_overlay(
            frame.image,
            parts[Blobs].blobs,
            parts[Windows].windows,
            parts[Points].points,
            parts[Tracks].tracks,
            truth=frame.truth,
            seq=frame.seq,
            scale=cfg.scale,
            percentiles=(cfg.low_percentile, cfg.high_percentile),
            gamma=cfg.gamma,
            tiles=cfg.tiles,
            tile_px=cfg.tile_px,
            zoom=cfg.zoom,
        )
        if png:
            path = Path(cfg.directory) / f"overlay_{frame.seq:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), canvas):
                raise OSError(f"cannot write {path}; check the overlay directory")
            self.written.append(path)
        if cfg.video is not None:
            self._write_video(canvas)
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
