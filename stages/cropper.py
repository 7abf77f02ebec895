"""Cropper: blob tracks, a 5-frame ring buffer and 11×11 windows with one shared origin.

Inputs are :class:`Frame` and :class:`Blobs` messages (two topics, any interleaving); they are
paired by ``seq`` with :class:`~stages.base.SeqJoin`. For every paired frame:

1. **Blob tracks.** Blob centroids are associated with the blob tracks (nearest neighbour,
   one-to-one via :func:`~stages.association.gated_assignment`, gate ``gate_px`` around each
   track's predicted position = last position + smoothed velocity). Unpaired blobs start
   tracks with new integer ids; a track is deleted after ``max_misses`` consecutive frames
   without a blob.
2. **Ring buffer.** The last 5 *frames* (whole images) are kept, not the last 5 patches, so
   the 5 patches of a window are cut at exactly one origin. Each track keeps its last 5
   positions (a ``deque(maxlen=5)``).
3. **Windows.** When frame n arrives, windows are emitted for the middle frame t = n − 2:
   the model sees frames t − 2 … t + 2, so **a window leaves the cropper 2 frames after its
   middle frame** (at 25 frames/s, 80 ms of latency), and every position downstream refers to
   frame t. The crop origin is ``round(centre_t) − 5`` where centre_t is the track's blob
   centroid in frame t (interpolated between the nearest detections before and after t when
   the blob was missed in frame t; no window when it was not seen on both sides). Every track
   that exists at frame t gets a window, from its birth frame on: the frames before its birth
   are in the ring buffer and are cut at the same origin. Windows need 5 consecutive frames;
   after a lost frame they resume once 5 consecutive frames are buffered.
   **Stream edges.** The first two frames of a stream have no earlier frames, and at the end
   of a stream (:meth:`Cropper.flush`) the last two have no later ones: there the missing
   frames repeat the nearest frame of the stream (frames 0, 0, 0, 1, 2 for t = 0), so every
   frame of a finite run leaves the cropper. Measured on 300 test trajectories (CSO-mAP,
   points mode, models trained on t = 2 … 17 only): fastunmix 86.7 on t = 0, 1 and 94.6 on
   t = 18, 19 against 93.7 inside; DeRefNet 96.5 and 96.9 against 95.8.
4. **Borders.** Crop pixels outside the frame take the frame's median (the background
   level); such a window is flagged (see :class:`CropWindow`).
5. **Background.** The unmixers learned SeqCSIST patches, whose background is 0, and they
   preserve brightness (a pedestal of 20 grey levels over 121 pixels weighs as much as ten
   targets). With ``subtract_background`` (default) the median of the outer ring of pixels
   of the 5 patches (200 pixels, away from the blob at the centre) is subtracted from the
   whole window; the value is kept in :attr:`CropWindow.background`. That removes a
   scene's level, not its texture: with ``scene_background`` (a staring sensor over a
   cluttered scene) the cropper first subtracts, pixel by pixel, the scene's background
   learned where no blob is (:class:`~stages.scene_background.SceneBackground`), then the
   ring median of what remains. ``background`` then holds the ring median plus the scene's
   level at the window's clipped pixels (the highest, so that ``saturation − background``,
   the extractor's clipping level, lies at or below every clipped pixel after the
   subtraction; the median of the scene crop when nothing clipped).
6. **Time index.** DeRefNet's time encoder saw middle-frame indices 2 … 17 of 20-frame
   trajectories. A live track is unbounded, so its index is ``t − f0`` (f0: the track's
   first frame) clamped to 2 … ``max_frame_index`` (17): the index grows with the track like
   in training and then stays at the last trained value. Wrapping (2 + (age − 2) mod 16) was
   rejected: it would make the model's conditioning jump every 16 frames for a target whose
   appearance changes smoothly, while a long-lived group looks most like the late frames of
   a training trajectory (its sub-targets have drifted furthest apart).
7. **Several sensors.** Blob tracks and ring buffers are kept per sensor (one
   :class:`WindowCropper` per ``sensor`` of the messages), and frames are counted with the
   messages' ``sensor_seq``: "frame t − 2" is the sensor's own frame two frames earlier. A
   Windows message carries the seq, time and sensor of its middle frame; blob ids are unique
   per sensor. The sensors must take turns (the simulator's round-robin), so that the
   middle frames leave in increasing ``seq``.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from sim.background_level import ring_levels
from sim.geometry import PATCH, WINDOW
from stages.association import gated_assignment
from stages.base import SeqJoin, Stage
from stages.messages import Blobs, Frame, Message, TruthPoint, WindowInfo, Windows, frame_header
from stages.patches import crop
from stages.scene_background import SceneBackground

logger = logging.getLogger(__name__)

HALF = PATCH // 2
MIDDLE = WINDOW // 2


@dataclass(frozen=True)
class CropperConfig:
    """Options of :class:`Cropper`.

    Attributes
    ----------
    gate_px : float
        Largest distance (px) between a track's predicted position and a blob it takes.
    max_misses : int
        Consecutive frames without a blob after which a track is deleted.
    velocity_smoothing : float
        Weight of the newest displacement in a track's velocity (exponential average).
    max_frame_index : int
        Clamp of the time index given to the model (17 = last middle frame of training).
    max_pending : int
        Incomplete frame/blob pairs held while waiting for the other part: how far (in
        frames) the frames may run ahead of their blobs before the oldest is dropped. The
        frames reach the cropper straight from the source, the blobs only after the
        detector, which lags by many frames when the source is not paced and the cores are
        busy (16 lost frames in unpaced benchmark runs on 2 busy cores).
    subtract_background : bool
        Subtract each window's background level (median of the patches' outer ring).
    saturation : float or None
        Raw level at which the sensor's pixels clip, passed on in every window
        (``WindowInfo.saturation``) so the extractor can ignore clipped pixels. None: from
        the frame's dtype (:func:`saturation_level`: 255 for uint8, 65535 for uint16, no
        clipping for float frames).
    gain, offset : float
        The sensor's raw counts to the models' grey levels: patches = gain · (raw − offset),
        and the saturation level likewise (the sensor profile's, :mod:`sim.sensor`; 1 and 0:
        frames already in grey levels).
    scene_background : bool
        Learn the scene's background pixel by pixel and subtract it from every patch
        before the ring median (a staring sensor over a cluttered scene; not for a panning
        camera). See :mod:`stages.scene_background`.
    scene_alpha : float
        Smallest weight of a new frame in a pixel's background estimate.
    scene_mask_px : float
        Radius (px) around each blob whose pixels do not update the estimate.
    """

    gate_px: float = 5.0
    max_misses: int = 3
    velocity_smoothing: float = 0.5
    max_frame_index: int = 17
    max_pending: int = 64
    subtract_background: bool = True
    saturation: float | None = None
    gain: float = 1.0
    offset: float = 0.0
    scene_background: bool = False
    scene_alpha: float = 0.05
    scene_mask_px: float = 3.0

    def __post_init__(self) -> None:
        if self.gate_px <= 0 or self.max_misses < 1 or self.max_pending < 1:
            raise ValueError("gate_px must be > 0, max_misses and max_pending >= 1")
        if not self.gain > 0:
            raise ValueError(f"gain must be > 0 grey levels per raw count, got {self.gain}")
        if not 0 < self.velocity_smoothing <= 1:
            raise ValueError("velocity_smoothing must be in (0, 1]")
        if self.max_frame_index < MIDDLE:
            raise ValueError(f"max_frame_index must be >= {MIDDLE}")


@dataclass(frozen=True)
class CropWindow:
    """One window of one blob track.

    Attributes
    ----------
    blob_id : int
    seq : int
        Middle frame t.
    origin : tuple of int
        (row, col) frame pixel of patch pixel (0, 0), shared by the 5 patches.
    patches : ndarray of shape (5, 11, 11), float32
        Crops of frames t − 2 … t + 2, minus ``background``.
    frame_index : int
        Time index for the model (see the module docstring).
    padded : bool
        True when part of the crop lies outside the frame (filled with the frame median).
    observed : bool
        True when the blob was detected in frame t (False: centre interpolated).
    centre : tuple of float
        The blob track's (row, col) in frame t.
    background : float
        Level subtracted from the patches (0 when ``subtract_background`` is off).
    """

    blob_id: int
    seq: int
    origin: tuple[int, int]
    patches: np.ndarray
    frame_index: int
    padded: bool
    observed: bool
    centre: tuple[float, float]
    background: float = 0.0


@dataclass
class _BlobTrack:
    blob_id: int
    born: int
    position: np.ndarray  # (2,) last estimate
    velocity: np.ndarray  # (2,) px/frame
    last_seen: int
    misses: int = 0
    #: (seq, row, col, observed) of the last WINDOW frames.
    history: deque = field(default_factory=lambda: deque(maxlen=WINDOW))


@dataclass
class _BufferedFrame:
    seq: int
    image: np.ndarray  # (H, W) float32
    truth: tuple[TruthPoint, ...] | None
    header: Mapping[str, int]  # the frame message's frame fields (messages.frame_header)
    fill: float | None = None  # median, computed on first use

    def fill_value(self) -> float:
        if self.fill is None:
            self.fill = float(np.median(self.image[::2, ::2]))
        return self.fill


def centre_at(history: Iterable[tuple[int, float, float, bool]], seq: int) -> tuple | None:
    """Blob position at frame ``seq`` from a track history, or None.

    Detected in ``seq``: that centroid. Otherwise linear interpolation between the nearest
    detections before and after ``seq``; None if there is no detection on one side.

    Returns
    -------
    ((row, col), observed) or None
    """
    seen = [(s, r, c) for s, r, c, obs in history if obs]
    for s, r, c in seen:
        if s == seq:
            return (r, c), True
    before = [h for h in seen if h[0] < seq]
    after = [h for h in seen if h[0] > seq]
    if not before or not after:
        return None
    (s0, r0, c0), (s1, r1, c1) = before[-1], after[0]
    w = (seq - s0) / (s1 - s0)
    return (r0 + w * (r1 - r0), c0 + w * (c1 - c0)), False


class WindowCropper:
    """Blob tracks + frame ring buffer → windows (numpy only; see the module docstring)."""

    def __init__(self, config: CropperConfig = CropperConfig()) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget all frames and tracks (ids restart at 0)."""
        self._frames: deque[_BufferedFrame] = deque(maxlen=WINDOW)
        self._tracks: list[_BlobTrack] = []
        self._next_id = 0
        self._first_seq: int | None = None
        self._saturation = math.inf
        self._scene = (SceneBackground(self.config.scene_alpha, self.config.scene_mask_px)
                       if self.config.scene_background else None)

    @property
    def blob_ids(self) -> list[int]:
        """Ids of the live blob tracks."""
        return [t.blob_id for t in self._tracks]

    def _associate(self, seq: int, centroids: np.ndarray) -> list[_BlobTrack]:
        """Update the tracks with the blobs of frame ``seq``; return the tracks deleted now."""
        cfg = self.config
        pred = np.array(
            [t.position + t.velocity * (seq - t.last_seen) for t in self._tracks]
        ).reshape(-1, 2)
        cost = np.linalg.norm(pred[:, None, :] - centroids[None, :, :], axis=-1)
        pairs, free_tracks, free_blobs = gated_assignment(cost, cfg.gate_px)
        alpha = cfg.velocity_smoothing
        for ti, bj in pairs:
            track = self._tracks[ti]
            step = (centroids[bj] - track.position) / (seq - track.last_seen)
            track.velocity = (1 - alpha) * track.velocity + alpha * step
            track.position = centroids[bj].copy()
            track.last_seen, track.misses = seq, 0
            track.history.append((seq, *track.position, True))
        lost = []
        for ti in free_tracks:
            track = self._tracks[ti]
            track.misses += 1
            track.history.append((seq, *pred[ti], False))
            if track.misses >= cfg.max_misses:
                lost.append(track)
        for bj in free_blobs:
            track = _BlobTrack(
                blob_id=self._next_id,
                born=seq,
                position=centroids[bj].copy(),
                velocity=np.zeros(2),
                last_seen=seq,
            )
            track.history.append((seq, *centroids[bj], True))
            self._next_id += 1
            self._tracks.append(track)
        return lost

    def update(
        self,
        seq: int,
        image: np.ndarray,
        centroids: np.ndarray,
        truth: tuple[TruthPoint, ...] | None = None,
        header: Mapping[str, int] | None = None,
        saturation: float = math.inf,
    ) -> list[CropWindow]:
        """Add frame ``seq`` and its blob centroids; return the windows of frame ``seq − 2``.

        Parameters
        ----------
        seq : int
            Frame number (increasing).
        image : ndarray of shape (H, W)
            The frame (any real dtype; kept as float32).
        centroids : ndarray of shape (N, 2)
            Blob (row, col) in frame pixels.
        truth, header
            Kept with the frame for :meth:`frame` (``header``: the frame message's
            :func:`~stages.messages.frame_header`, which the cropper stage puts on the
            frame's Windows message; default ``{}``).
        saturation : float
            Raw level at which the frame's pixels clip (see ``scene_background``).

        Returns
        -------
        list of CropWindow, sorted by track id (empty when frame ``seq − 2`` has no
        5 consecutive frames around it, the stream's first frames repeated as needed).
        """
        if self._frames and seq <= self._frames[-1].seq:
            raise ValueError(f"seq must increase: got {seq} after {self._frames[-1].seq}")
        if self._first_seq is None:
            self._first_seq = seq
        self._saturation = saturation
        image = np.asarray(image, dtype=np.float32)
        self._frames.append(_BufferedFrame(seq, image, truth, header or {}))
        centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
        lost = self._associate(seq, centroids)
        if self._scene is not None:  # masked: this frame's blobs and every live track's
            # position in it (a blob the detector missed this frame is still masked)
            tracks = np.array([t.history[-1][1:3] for t in self._tracks]).reshape(-1, 2)
            self._scene.update(image, np.concatenate([centroids, tracks]))
        windows = self._windows(seq - MIDDLE)
        self._tracks = [t for t in self._tracks if t not in lost]
        return windows

    def finish(self) -> list[tuple[int, list[CropWindow]]]:
        """End of stream: the windows of the last frames, whose later frames never come.

        Returns
        -------
        list of (middle frame seq, windows) for the buffered frames after the last middle
        frame :meth:`update` returned (frames lost upstream have none), oldest first; in
        their windows the frames after the newest repeat the newest. Further calls return
        [] until new frames arrive.
        """
        if not self._frames:
            return []
        newest = self._frames[-1].seq
        first = max(newest - MIDDLE + 1, self._first_seq)
        out = [(f.seq, self._windows(f.seq, newest)) for f in self._frames if f.seq >= first]
        self._first_seq = newest + 1
        return out

    def frame(self, seq: int) -> _BufferedFrame | None:
        """The buffered frame ``seq`` (image, truth, header), or None."""
        for buffered in self._frames:
            if buffered.seq == seq:
                return buffered
        return None

    def _window_frames(self, middle: int, newest: int) -> list[_BufferedFrame] | None:
        """The 5 buffered frames of the window of ``middle``, or None when one is missing.

        Frames before the stream's first frame or after ``newest`` repeat the nearest one.
        """
        first = max(middle - MIDDLE, self._first_seq)
        last = min(middle + MIDDLE, newest)
        if not first <= middle <= last:
            return None
        by_seq = {f.seq: f for f in self._frames}
        if any(s not in by_seq for s in range(first, last + 1)):
            return None
        seqs = range(middle - MIDDLE, middle + MIDDLE + 1)
        return [by_seq[min(max(s, first), last)] for s in seqs]

    def _windows(self, middle: int, newest: int | None = None) -> list[CropWindow]:
        """Windows of every track at frame ``middle``; ``newest``: last frame of a finished
        stream (None: the stream goes on, frame ``middle + 2`` is the newest)."""
        frames = self._window_frames(middle, middle + MIDDLE if newest is None else newest)
        if frames is None:
            return []
        scene = self._scene.estimate() if self._scene is not None else None
        windows = []
        for track in self._tracks:
            if track.born > middle:
                continue
            found = centre_at(track.history, middle)
            if found is None:
                continue
            centre, observed = found
            origin = (int(np.rint(centre[0])) - HALF, int(np.rint(centre[1])) - HALF)
            height, width = frames[0].image.shape
            padded = not (
                0 <= origin[0] <= height - PATCH and 0 <= origin[1] <= width - PATCH
            )
            fills = [f.fill_value() if padded else 0.0 for f in frames]
            patches = np.stack(
                [crop(f.image, origin, PATCH, v) for f, v in zip(frames, fills, strict=True)]
            )
            scene_level = 0.0
            if scene is not None:
                scene_crop = crop(scene, origin, PATCH, float(np.median(scene)) if padded else 0.0)
                clipped = (patches >= self._saturation).any(axis=0)
                scene_level = float(scene_crop[clipped].max() if clipped.any()
                                    else np.median(scene_crop))
                patches -= scene_crop
            background = (float(ring_levels(patches[None])[0])
                          if self.config.subtract_background else 0.0)
            patches -= np.float32(background)
            background += scene_level
            windows.append(
                CropWindow(
                    blob_id=track.blob_id,
                    seq=middle,
                    origin=origin,
                    patches=patches,
                    frame_index=min(max(middle - track.born, MIDDLE), self.config.max_frame_index),
                    padded=padded,
                    observed=observed,
                    centre=(float(centre[0]), float(centre[1])),
                    background=background,
                )
            )
        return sorted(windows, key=lambda w: w.blob_id)


def saturation_level(dtype: np.dtype) -> float:
    """Raw level at which pixels of ``dtype`` clip: an integer type's maximum, inf for floats.

    >>> saturation_level(np.dtype(np.uint8)), saturation_level(np.dtype(np.float32))
    (255.0, inf)
    """
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else math.inf


def truth_in_crop(
    truth: tuple[TruthPoint, ...] | None, origin: tuple[int, int]
) -> tuple[TruthPoint, ...]:
    """True sub-targets whose position falls inside the 11×11 crop at ``origin``."""
    r0, c0 = origin
    return tuple(
        p
        for p in truth or ()
        if r0 - 0.5 <= p.row < r0 + PATCH - 0.5 and c0 - 0.5 <= p.col < c0 + PATCH - 0.5
    )


class Cropper(Stage):
    """Frames + blobs → one :class:`Windows` message per frame (middle frame = newest − 2).

    Every paired frame n ≥ 2 of a sensor whose middle frame n − 2 (counted in the sensor's
    ``sensor_seq``) is buffered gives one Windows message with that middle frame's header
    fields (seq, ``t_source_ns``, sensor; N = 0 when no track has a window); at the end of
    the stream :meth:`flush` gives each sensor's last two frames' messages, so every frame of
    a finite run leaves the cropper. A frame or blobs message whose partner never came is
    dropped and counted in the run report (``summary()["join_dropped"]``).
    """

    Config = CropperConfig
    SENSOR_FIELDS = {"saturation": "saturation", "gain": "gain", "offset": "offset"}
    INPUTS = ("frames", "blobs")
    OUTPUT = "windows"

    def __init__(self, config: CropperConfig | None = None) -> None:
        super().__init__(config)
        #: sensor -> its blob tracks and ring buffer, made at the sensor's first frame
        self.cores: defaultdict[int, WindowCropper] = defaultdict(
            lambda: WindowCropper(self.config))
        self.join = SeqJoin((Frame, Blobs), self.config.max_pending)
        #: sensor -> clipping level of its latest frame (WindowInfo.saturation)
        self._saturation: dict[int, float] = {}

    def reset(self) -> None:
        """Forget all frames, tracks and pending messages of every sensor."""
        self.cores.clear()
        self.join = SeqJoin((Frame, Blobs), self.config.max_pending)

    def summary(self) -> dict[str, int]:
        """``join_dropped``: frames dropped without windows because their frame or blobs
        message was missing (lost upstream, or more than ``max_pending`` frames behind)."""
        return {"join_dropped": self.join.dropped}

    def process(self, msg: Message) -> Iterable[Message]:
        parts = self.join.add(msg)
        if parts is None:
            return []
        frame, blobs = parts[Frame], parts[Blobs]
        centroids = np.array([[b.row, b.col] for b in blobs.blobs]).reshape(-1, 2)
        raw_saturation = (saturation_level(frame.image.dtype) if self.config.saturation is None
                          else float(self.config.saturation))
        self._saturation[frame.sensor] = self._to_grey(raw_saturation)
        core = self.cores[frame.sensor]
        windows = core.update(frame.sensor_seq, self._to_grey(frame.image), centroids,
                              frame.truth, frame_header(frame), self._saturation[frame.sensor])
        middle = core.frame(frame.sensor_seq - MIDDLE)
        return [] if middle is None else [self._message(frame.sensor, middle, windows)]

    def _to_grey(self, raw):
        """Raw counts (an image or a level) in the models' grey levels: gain · (raw − offset);
        unchanged (the same object) with the default gain 1 and offset 0."""
        gain, offset = self.config.gain, self.config.offset
        if gain == 1.0 and offset == 0.0:
            return raw
        if isinstance(raw, np.ndarray):
            return (np.float32(gain) * (raw.astype(np.float32) - np.float32(offset)))
        return gain * (raw - offset)

    def flush(self) -> Iterable[Message]:
        """Windows messages of every sensor's last two frames (:meth:`WindowCropper.finish`),
        in ``seq`` order."""
        messages = [self._message(sensor, core.frame(sensor_seq), windows)
                    for sensor, core in self.cores.items()
                    for sensor_seq, windows in core.finish()]
        return sorted(messages, key=lambda m: m.seq)

    def _message(self, sensor: int, middle: _BufferedFrame,
                 windows: list[CropWindow]) -> Windows:
        infos = tuple(
            WindowInfo(
                blob_id=w.blob_id,
                origin_row=w.origin[0],
                origin_col=w.origin[1],
                frame_index=w.frame_index,
                truth=truth_in_crop(middle.truth, w.origin),
                background=w.background,
                saturation=self._saturation[sensor],
            )
            for w in windows
        )
        patches = (
            np.stack([w.patches for w in windows])
            if windows
            else np.zeros((0, WINDOW, PATCH, PATCH), dtype=np.float32)
        )
        return Windows(**middle.header, windows=infos, patches=patches)
