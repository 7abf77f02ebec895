"""Message types of the live chain: one frozen dataclass per topic.

Every message describes one frame of the stream and carries the same header fields:

- ``seq`` (int >= 0): the seq of the frame the content describes. A topic carries at most
  one message per frame seq, in increasing order, so a jump in ``seq`` on a link is a lost
  message. Stages emit a message for every frame they handle, empty lists included.
- ``t_source_ns`` (int): source timestamp of that frame in nanoseconds (a camera's capture
  time, or ``seq * period`` for the simulator). Stages take time from here, never from the
  clock, so a replay reproduces a live run bit for bit.
- ``stamps`` (dict str -> int): per-stage timestamps (``"<stage>.in"``, ``"<stage>.out"``, Unix
  time in ns) filled by the runner only; stages leave it empty.
- ``sensor`` (int >= 0, default 0): the sensor that took the frame. A chain with several
  sensors carries all of them on each topic, interleaved under one ``seq`` (the simulator with
  ``sensors: N`` sends them round-robin: seq s is a frame of sensor s mod N).
- ``sensor_seq`` (int >= 0, default ``seq``): the frame's number within its sensor's stream,
  so frames n and n + 1 of one sensor are consecutive in time. Stages with memory over time
  (the cropper's 5-frame windows, the tracker's motion model) keep one state per sensor and
  count frames with it; ``seq`` alone cannot say which frames of a sensor are consecutive
  without knowing how many sensors there are and how they interleave. With one sensor
  ``sensor_seq == seq``.

Every stage that derives a message from an input copies the input's four frame fields
(:func:`frame_header`).

Class attributes (not fields): ``SCHEMA`` (the wire name), ``VERSION`` (bumped on any
incompatible change; :data:`VERSION_CHANGES` says what each bump changed), ``TOPIC`` (the
default topic), ``ARRAYS`` (fields holding an ndarray, sent as raw buffers) and ``RECORDS``
(fields holding a tuple of record dataclasses, sent as a list of maps).

Positions are (row, col) floats in frame pixels, integer = pixel centre. Intensities are raw
sensor units. Per-target data are tuples of small frozen records, never int-keyed maps.

Batching: the cropper sends all windows of one frame as one :class:`Windows` message whose
``patches`` array has shape (N, 5, 11, 11); the unmixer answers with one :class:`Maps`
message. One message per frame keeps the bus overhead per frame constant (six groups would
otherwise cost six messages) and lets the unmixer run one batched forward pass. A frame
without windows gives N = 0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from sim.geometry import HR, PATCH, WINDOW

#: Wire version -> what changed from the version before it (quoted when a peer speaks an old one).
VERSION_CHANGES: dict[int, str] = {
    2: "WindowInfo.track_id was renamed blob_id; Point.track_id became window_id, the index "
       "of the point's window in its frame's Windows message",
    3: "new header keys sensor (the sensor that took the frame) and sensor_seq (the frame's "
       "number within that sensor's stream), both required",
}


class PipelineError(Exception):
    """Base class of the errors raised by stages and by the pipeline."""


class MessageError(PipelineError, ValueError):
    """A message was built with a field of the wrong shape, dtype or type."""


# ---------------------------------------------------------------------------------------------
# Records: the elements of per-target lists.


@dataclass(frozen=True)
class TruthPoint:
    """One true sub-target (simulator ground truth).

    Attributes
    ----------
    group : int
        Index of the closely-spaced group (the simulator's trajectory) it belongs to.
    row, col : float
        Position in frame pixels (SeqCSIST ``xc`` = row, ``yc`` = col).
    brightness : float
        Peak brightness in grey levels.
    """

    group: int
    row: float
    col: float
    brightness: float

    RECORDS: ClassVar[Mapping[str, type]] = {}


@dataclass(frozen=True)
class Blob:
    """One detection of the detector.

    Attributes
    ----------
    row, col : float
        Intensity-weighted centroid in frame pixels.
    peak : float
        Highest pixel value of the blob (raw units, after background removal if any).
    area : int
        Number of pixels of the blob.
    snr : float
        Peak over the local noise standard deviation.
    """

    row: float
    col: float
    peak: float
    area: int
    snr: float

    RECORDS: ClassVar[Mapping[str, type]] = {}
    #: Largest |row| or |col| a valid blob may have (no sensor frame is larger).
    MAX_COORD: ClassVar[float] = 1e6

    def is_valid(self) -> bool:
        """Finite fields, a positive area and a position within ±MAX_COORD (what an outside
        detector's blob must satisfy before the chain uses or re-publishes it)."""
        values = (self.row, self.col, self.peak, self.snr)
        return (all(math.isfinite(v) for v in values) and self.area > 0
                and abs(self.row) <= self.MAX_COORD and abs(self.col) <= self.MAX_COORD)


@dataclass(frozen=True)
class WindowInfo:
    """Metadata of one window (one blob track at one frame).

    Attributes
    ----------
    blob_id : int
        Id of the blob track the window follows (the cropper's id; for a replayed SeqCSIST
        dataset, the trajectory index).
    origin_row, origin_col : int
        Frame pixel of patch pixel (0, 0); all 5 patches of the window share it, so a patch
        position p maps to the frame position origin + p.
    frame_index : int
        Index of the window's middle frame within its track (0-based), the ``frame_index`` of
        the model interface (time encoder input).
    truth : tuple of TruthPoint
        True sub-targets of the middle frame inside the crop, in frame pixels; empty when the
        source has no truth.
    background : float
        Level (grey levels) the cropper subtracted from the window's patches: raw intensity =
        patch value + background. 0 when nothing was subtracted. With the cropper's
        ``scene_background`` the subtracted level varies from pixel to pixel and this is its
        value at the window's clipped pixels (the highest), so the clipping rule below holds.
    saturation : float
        Raw level at which the frame's pixels clip (255 for 8-bit frames; ``inf`` when they
        do not clip): a patch pixel at ``saturation − background`` or above is clipped.
    """

    blob_id: int
    origin_row: int
    origin_col: int
    frame_index: int
    truth: tuple[TruthPoint, ...] = ()
    background: float = 0.0
    saturation: float = 255.0

    RECORDS: ClassVar[Mapping[str, type]] = {"truth": TruthPoint}

    def __post_init__(self) -> None:
        object.__setattr__(self, "truth", tuple(self.truth))


@dataclass(frozen=True)
class Point:
    """One extracted sub-target.

    Attributes
    ----------
    row, col : float
        Sub-pixel position in frame pixels.
    score : float
        Ranking value, not a probability. From the sub-pixel extractor (``score:
        brightness``, the default): the target's fitted brightness in grey levels above the
        window's background (SeqCSIST targets: 220–250; a poor fit can give any value, also
        negative, and ranks accordingly); with ``score: mass``: the window map's total
        positive mass, grey levels.
    window_id : int
        Index of the window the point was extracted from in its frame's ``Windows`` (and
        ``Maps``) message, so that window's ``blob_id`` is ``windows[window_id].blob_id``
        (-1 when unknown).
    """

    row: float
    col: float
    score: float
    window_id: int = -1

    RECORDS: ClassVar[Mapping[str, type]] = {}


@dataclass(frozen=True)
class Track:
    """One confirmed sub-target track at one frame.

    Attributes
    ----------
    track_id : int
        Stable id of the tracker's confirmed track.
    row, col : float
        Filtered position in frame pixels.
    vrow, vcol : float
        Velocity in pixels per frame.
    score : float
        Track confidence.
    age : int
        Number of frames since the track was born.
    """

    track_id: int
    row: float
    col: float
    vrow: float
    vcol: float
    score: float
    age: int

    RECORDS: ClassVar[Mapping[str, type]] = {}


# ---------------------------------------------------------------------------------------------
# Messages.


def _check_array(
    owner: str, name: str, value: object, dtypes: tuple[str, ...], shape: tuple[int | str, ...]
) -> None:
    """Raise MessageError unless ``value`` is an ndarray of one of ``dtypes`` and ``shape``.

    A name (str) in ``shape`` matches any length on that axis.
    """
    if not isinstance(value, np.ndarray):
        raise MessageError(f"{owner}.{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype.name not in dtypes:
        raise MessageError(
            f"{owner}.{name} must have dtype {' or '.join(dtypes)}, got {value.dtype.name}"
        )
    ok = value.ndim == len(shape) and all(
        isinstance(want, str) or want == got for want, got in zip(shape, value.shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join(map(str, shape)) + ")"
        raise MessageError(f"{owner}.{name} must have shape {want}, got {value.shape}")


def _check_records(owner: str, name: str, values: tuple, kind: type) -> None:
    for item in values:
        if not isinstance(item, kind):
            raise MessageError(
                f"{owner}.{name} must hold {kind.__name__} records, got {type(item).__name__}"
            )


#: The header fields that say which frame a message describes (see the module docstring).
FRAME_FIELDS = ("seq", "t_source_ns", "sensor", "sensor_seq")


def frame_header(msg: Message) -> dict[str, int]:
    """The frame fields of ``msg`` (:data:`FRAME_FIELDS`), to build a message about the same
    frame: ``Points(**frame_header(maps), points=...)``."""
    return {key: getattr(msg, key) for key in FRAME_FIELDS}


@dataclass(frozen=True, kw_only=True, eq=False)
class Message:
    """Header fields shared by every message (see the module docstring)."""

    seq: int
    t_source_ns: int
    stamps: Mapping[str, int] = field(default_factory=dict)
    sensor: int = 0
    sensor_seq: int | None = None  # None: the same as seq

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 3
    TOPIC: ClassVar[str] = ""
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    RECORDS: ClassVar[Mapping[str, type]] = {}

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.sensor_seq is None:
            object.__setattr__(self, "sensor_seq", self.seq)
        try:  # numpy integers are accepted and stored as int
            for key in FRAME_FIELDS:
                object.__setattr__(self, key, operator.index(getattr(self, key)))
        except TypeError as exc:
            raise MessageError(f"{name}.{', '.join(FRAME_FIELDS)} must be ints, got "
                               f"{frame_header(self)!r}") from exc
        for key in ("seq", "sensor", "sensor_seq"):
            if getattr(self, key) < 0:
                raise MessageError(f"{name}.{key} must be >= 0, got {getattr(self, key)}")
        for key, kind in self.RECORDS.items():
            value = getattr(self, key)
            if value is not None:
                value = tuple(value)
                _check_records(name, key, value, kind)
                object.__setattr__(self, key, value)


@dataclass(frozen=True, kw_only=True, eq=False)
class Frame(Message):
    """One sensor frame.

    Attributes
    ----------
    image : ndarray of shape (H, W), uint8, uint16 or float32
        Raw intensities.
    truth : tuple of TruthPoint or None
        All true sub-targets of the frame (simulator only); ``None`` = no truth available,
        ``()`` = the frame has no target.
    """

    image: np.ndarray
    truth: tuple[TruthPoint, ...] | None = None

    SCHEMA: ClassVar[str] = "csist.Frame"
    TOPIC: ClassVar[str] = "frames"
    ARRAYS: ClassVar[tuple[str, ...]] = ("image",)
    RECORDS: ClassVar[Mapping[str, type]] = {"truth": TruthPoint}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_array("Frame", "image", self.image, ("uint8", "uint16", "float32"), ("H", "W"))


@dataclass(frozen=True, kw_only=True, eq=False)
class Blobs(Message):
    """The detector's blobs of one frame.

    Attributes
    ----------
    blobs : tuple of Blob
    """

    blobs: tuple[Blob, ...] = ()

    SCHEMA: ClassVar[str] = "csist.Blobs"
    TOPIC: ClassVar[str] = "blobs"
    RECORDS: ClassVar[Mapping[str, type]] = {"blobs": Blob}


@dataclass(frozen=True, kw_only=True, eq=False)
class Windows(Message):
    """All windows whose middle frame is frame ``seq``, batched.

    Attributes
    ----------
    windows : tuple of WindowInfo, length N
        Metadata of window i.
    patches : ndarray of shape (N, 5, 11, 11), float32
        Window i holds the 11×11 crops of frames seq−2 … seq+2 (oldest first) at one origin,
        in grey levels above the window's background: the cropper subtracts
        ``windows[i].background`` by default (the unmixers were trained on patches whose
        background is 0), so raw intensity = patch + background (with a learned scene
        background, patch + that pixel's background: see :class:`WindowInfo`).
    """

    windows: tuple[WindowInfo, ...]
    patches: np.ndarray

    SCHEMA: ClassVar[str] = "csist.Windows"
    TOPIC: ClassVar[str] = "windows"
    ARRAYS: ClassVar[tuple[str, ...]] = ("patches",)
    RECORDS: ClassVar[Mapping[str, type]] = {"windows": WindowInfo}

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.windows)
        _check_array("Windows", "patches", self.patches, ("float32",), (n, WINDOW, PATCH, PATCH))


@dataclass(frozen=True, kw_only=True, eq=False)
class Maps(Message):
    """The unmixer's HR maps of all windows of frame ``seq``, batched.

    Attributes
    ----------
    windows : tuple of WindowInfo, length N
        Copied from the :class:`Windows` message.
    patches : ndarray of shape (N, 5, 11, 11), float32
        Copied from the :class:`Windows` message (physics-based extractors need them).
    maps : ndarray of shape (N, 33, 33), float32
        Brightness per HR cell; cell i has its centre at (i − 1)/3 patch pixels.
    """

    windows: tuple[WindowInfo, ...]
    patches: np.ndarray
    maps: np.ndarray

    SCHEMA: ClassVar[str] = "csist.Maps"
    TOPIC: ClassVar[str] = "maps"
    ARRAYS: ClassVar[tuple[str, ...]] = ("patches", "maps")
    RECORDS: ClassVar[Mapping[str, type]] = {"windows": WindowInfo}

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.windows)
        _check_array("Maps", "patches", self.patches, ("float32",), (n, WINDOW, PATCH, PATCH))
        _check_array("Maps", "maps", self.maps, ("float32",), (n, HR, HR))


@dataclass(frozen=True, kw_only=True, eq=False)
class Points(Message):
    """Sub-targets extracted at frame ``seq``.

    Attributes
    ----------
    points : tuple of Point
    """

    points: tuple[Point, ...] = ()

    SCHEMA: ClassVar[str] = "csist.Points"
    TOPIC: ClassVar[str] = "points"
    RECORDS: ClassVar[Mapping[str, type]] = {"points": Point}


@dataclass(frozen=True, kw_only=True, eq=False)
class Tracks(Message):
    """Confirmed sub-target tracks at frame ``seq``.

    Attributes
    ----------
    tracks : tuple of Track
    """

    tracks: tuple[Track, ...] = ()

    SCHEMA: ClassVar[str] = "csist.Tracks"
    TOPIC: ClassVar[str] = "tracks"
    RECORDS: ClassVar[Mapping[str, type]] = {"tracks": Track}


@dataclass(frozen=True, kw_only=True, eq=False)
class Stats(Message):
    """Heartbeat and counters of one running stage (sent by the runner, not by stages).

    ``seq`` counts the stage's heartbeats and ``t_source_ns`` is the runner's Unix time.

    Attributes
    ----------
    stage : str
        Stage name from the config.
    msgs_in, msgs_out : int
        Messages processed and emitted so far.
    dropped : int
        Messages dropped by a ``drop_oldest`` queue.
    decode_errors : int
        Malformed messages dropped on receive.
    seq_gaps : int
        Messages missing according to ``seq`` jumps on the stage's input links.
    p50_ms, p99_ms : float
        Processing time per message, over the messages since the previous heartbeat (NaN
        when there were none).
    """

    stage: str
    msgs_in: int = 0
    msgs_out: int = 0
    dropped: int = 0
    decode_errors: int = 0
    seq_gaps: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

    SCHEMA: ClassVar[str] = "csist.Stats"
    TOPIC: ClassVar[str] = "stats"


@dataclass(frozen=True, kw_only=True, eq=False)
class EndOfStream(Message):
    """Transport marker: the producer of a link has flushed and will send nothing more.

    Sent by the runner on every output link at the end of a run; never given to a stage.
    ``seq`` is the number of messages sent on the link before it and ``t_source_ns`` is 0.
    The tap publishes one on each of its topics at the end of a run (``seq``: the messages
    it published on that topic, :class:`Skipped` notices not counted).
    """

    SCHEMA: ClassVar[str] = "csist.EndOfStream"


@dataclass(frozen=True, kw_only=True, eq=False)
class Skipped(Message):
    """Tap notice: frames ``seq`` … ``last`` will not come on this topic.

    Published by the tap on a topic just before the message that follows a gap in that
    topic's ``seq`` (and at the end of a run, before the topic's EndOfStream, for its missing
    last seqs up to the newest seq of the run): those messages were dropped inside the chain
    (a stage that fell behind) or never produced (an outside detector that skipped frames). A
    subscriber that sees a gap *not* announced this way lost the messages itself (slow
    joiner, or ``hwm`` overflow). ``t_source_ns`` is that of the message that follows (0 at
    the end of a run).

    Attributes
    ----------
    last : int
        Last skipped seq (>= ``seq``).
    """

    last: int

    SCHEMA: ClassVar[str] = "csist.Skipped"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.last, int) or self.last < self.seq:
            raise MessageError(f"Skipped.last must be an int >= seq {self.seq}, got "
                               f"{self.last!r}")


#: Every message type by wire schema name.
MESSAGE_TYPES: Mapping[str, type[Message]] = {
    cls.SCHEMA: cls
    for cls in (Frame, Blobs, Windows, Maps, Points, Tracks, Stats, EndOfStream, Skipped)
}
