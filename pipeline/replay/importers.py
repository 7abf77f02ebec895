"""Replay sources: MCAP recordings, image folders, npy/npz stacks and video files.

Each is a :class:`~pipeline.replay.playback.ReplaySource` (time window, loop, pacing). Files without
timestamps get ``seq = i`` and ``t_source_ns = round(i · 1e9 / fps)`` for frame i of the file,
and no truth. Pixel values are passed on unchanged: uint8, uint16 and float32 frames keep their
type (16-bit PNG/TIFF are read with ``cv2.IMREAD_UNCHANGED``); other numeric types become
float32.

Video is the exception: OpenCV decodes it to 8-bit, and lossy codecs (MJPG, H.264…) smear and
quantise the faint, few-grey-level targets this pipeline looks for. A clear warning says so;
use 16-bit PNG/TIFF, npy or an MCAP recording for anything that is scored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.config import ConfigError
from pipeline.attach.record import read_recording, recording_info
from pipeline.replay.playback import ReplaySource, ReplayTiming, frame_window
from sim.seqcsist_io import numbered_files
from stages.messages import Frame, Message

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mjpg", ".mjpeg", ".m4v")
KEPT_DTYPES = ("uint8", "uint16", "float32")

VIDEO_WARNING = (
    "%s: video is decoded to 8 bits and lossy codecs (MJPG, H.264, ...) smear and quantise "
    "faint targets of a few grey levels; detections and unmixing on it are NOT representative. "
    "Use 16-bit PNG/TIFF, npy/npz or an MCAP recording for anything you score."
)


def _frame(index: int, fps: float, image: np.ndarray) -> Frame:
    return Frame(seq=index, t_source_ns=round(index * 1e9 / fps), image=image)


def _as_frame_image(image: np.ndarray, where: str) -> np.ndarray:
    """A 2-D image in a dtype a Frame carries (uint8/uint16/float32 kept, others float32)."""
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4
                             else cv2.COLOR_BGR2GRAY)
    if image.ndim != 2:
        raise ConfigError(f"{where}: expected a single-channel (H, W) image, got shape "
                          f"{image.shape}")
    if image.dtype.name not in KEPT_DTYPES:
        if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype,
                                                                      np.complexfloating):
            raise ConfigError(f"{where}: pixel type {image.dtype} is not a real number")
        image = image.astype(np.float32)
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------------------------------------
# MCAP recordings.


@dataclasses.dataclass(frozen=True, kw_only=True)
class McapSourceConfig(ReplayTiming):
    """Options of :class:`McapSource` (plus :class:`ReplayTiming`).

    Attributes
    ----------
    path : str
        The ``.mcap`` file.
    topics : tuple of str
        Recorded topics to replay.
    """

    path: str
    topics: tuple[str, ...] = ("frames",)


class McapSource(ReplaySource):
    """Messages of the chosen topics of a recording, in recording order (finished or not)."""

    Config = McapSourceConfig

    def __init__(self, config: McapSourceConfig) -> None:
        super().__init__(config)
        self._start_ns: int | None = None

    def start(self) -> None:
        self._start_ns = recording_info(self.config.path).start_ns

    def pass_once(self) -> Iterator[Message]:
        cfg = self.config
        origin = self._start_ns or 0
        first = None if cfg.start_s is None else origin + round(cfg.start_s * 1e9)
        last = None if cfg.end_s is None else origin + round(cfg.end_s * 1e9)
        for _, msg in read_recording(cfg.path, cfg.topics, first, last):
            yield msg


# ---------------------------------------------------------------------------------------------
# Image folders.


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileSourceConfig(ReplayTiming):
    """Options of a file source (plus :class:`ReplayTiming`).

    Attributes
    ----------
    path : str
    fps : float
        Frame rate that defines ``t_source_ns`` (the files carry no time).
    """

    path: str
    fps: float = 25.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


def numbered_images(folder: Path) -> list[Path]:
    """PNG/TIFF files of ``folder`` sorted by the first integer in their names.

    Raises
    ------
    ConfigError
        No image, a name without a number, or two files with the same number.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    numbered = numbered_files(folder, IMAGE_SUFFIXES, ConfigError)
    if not numbered:
        raise ConfigError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images")
    return [path for _, _, path in numbered]


class ImageFolderSource(ReplaySource):
    """Frames from a folder of 8/16-bit (or float) PNG/TIFF images, in numeric name order."""

    Config = FileSourceConfig

    def __init__(self, config: FileSourceConfig) -> None:
        super().__init__(config)
        self._paths: list[Path] = []
        self._shape: tuple[int, ...] | None = None

    def start(self) -> None:
        self._paths = numbered_images(Path(self.config.path))
        first = self._read(self._paths[0])
        if first.dtype == np.uint8:
            logger.info("%s: 8-bit images (1 grey level is the finest step)", self.config.path)

    def _read(self, path: Path) -> np.ndarray:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ConfigError(f"{path}: cannot decode the image (corrupt, or not PNG/TIFF)")
        image = _as_frame_image(raw, str(path))
        if self._shape is None:
            self._shape = image.shape
        elif image.shape != self._shape:
            raise ConfigError(f"{path}: image is {image.shape}, the first frame {self._shape}; "
                              f"all frames must have one size")
        return image

    def pass_once(self) -> Iterator[Message]:
        for i in frame_window(len(self._paths), self.config.fps, self.config):
            yield _frame(i, self.config.fps, self._read(self._paths[i]))


# ---------------------------------------------------------------------------------------------
# npy / npz stacks.


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArraySourceConfig(FileSourceConfig):
    """Options of :class:`ArraySource` (plus :class:`FileSourceConfig`).

    Attributes
    ----------
    key : str or None
        Array of a ``.npz`` file; None takes ``frames`` if present, else its only 3-D array.
    """

    key: str | None = None


def load_stack(path: Path, key: str | None = None) -> np.ndarray:
    """The (T, H, W) frame stack of a ``.npy`` (memory-mapped) or ``.npz`` file.

    Raises
    ------
    ConfigError
        Unreadable file, unknown or ambiguous key, or an array that is not (T, H, W).
    """
    try:
        loaded: Any = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the array file ({exc})") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            stacks = [k for k in loaded.files if loaded[k].ndim == 3]
            if key is None:
                key = "frames" if "frames" in loaded.files else (
                    stacks[0] if len(stacks) == 1 else None)
            if key is None or key not in loaded.files:
                raise ConfigError(f"{path}: choose the frame array with --key (arrays: "
                                  f"{loaded.files}; 3-D ones: {stacks})")
            array = loaded[key]
    else:
        array = loaded
    if array.ndim != 3:
        raise ConfigError(f"{path}: frames must be a (T, H, W) stack, got shape {array.shape}")
    return array


class ArraySource(ReplaySource):
    """Frames from a (T, H, W) stack in a ``.npy`` or ``.npz`` file."""

    Config = ArraySourceConfig

    def __init__(self, config: ArraySourceConfig) -> None:
        super().__init__(config)
        self._stack: np.ndarray | None = None

    def start(self) -> None:
        self._stack = load_stack(Path(self.config.path), self.config.key)

    def pass_once(self) -> Iterator[Message]:
        assert self._stack is not None, "start() was not called"
        for i in frame_window(len(self._stack), self.config.fps, self.config):
            yield _frame(i, self.config.fps,
                         _as_frame_image(np.asarray(self._stack[i]), f"{self.config.path}[{i}]"))


# ---------------------------------------------------------------------------------------------
# Video.


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoSourceConfig(FileSourceConfig):
    """Options of :class:`VideoSource`; ``fps = 0`` takes the file's frame rate (25 if none)."""

    fps: float = 0.0

    def __post_init__(self) -> None:
        ReplayTiming.__post_init__(self)
        if self.fps < 0:
            raise ValueError(f"fps must be >= 0 (0 = the file's), got {self.fps}")


class VideoSource(ReplaySource):
    """8-bit grey frames of a video file (cv2.VideoCapture); warns that video is lossy."""

    Config = VideoSourceConfig

    def __init__(self, config: VideoSourceConfig) -> None:
        super().__init__(config)
        self.fps = config.fps

    def _open(self) -> Any:
        capture = cv2.VideoCapture(self.config.path)
        if not capture.isOpened():
            raise ConfigError(f"{self.config.path}: OpenCV cannot open this video (missing "
                              f"file or unsupported codec)")
        return capture

    def start(self) -> None:
        capture = self._open()
        if not self.fps:
            self.fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        capture.release()
        logger.warning(VIDEO_WARNING, self.config.path)

    def pass_once(self) -> Iterator[Message]:
        capture = self._open()
        window = frame_window(2**62, self.fps, self.config)
        try:
            for index in range(window.stop):
                if index < window.start:  # skip without decoding
                    if not capture.grab():
                        return
                    continue
                ok, image = capture.read()
                if not ok:
                    return
                yield _frame(index, self.fps, _as_frame_image(image, self.config.path))
        finally:
            capture.release()
