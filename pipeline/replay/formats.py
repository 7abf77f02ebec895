"""The one table of replayable source formats: how each is recognised and what source reads it.

To add a format: write its source (a :class:`~pipeline.replay.playback.ReplaySource`, see
:mod:`pipeline.replay.importers`), then add one :class:`ReplayFormat` to :data:`FORMATS`.
Auto-detection asks the formats in table order; ``--format`` and the errors list the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.config import ConfigError
from pipeline.attach.record import recording_info
from pipeline.replay.importers import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    ArraySource,
    ArraySourceConfig,
    FileSourceConfig,
    ImageFolderSource,
    McapSource,
    McapSourceConfig,
    VideoSource,
    VideoSourceConfig,
)

#: ``build(path, options, timing) -> (source config, source class, topics it provides)``;
#: ``options`` is a :class:`~pipeline.replay.plan.ReplayOptions`, ``timing`` the playback
#: keywords (rate, loop, start_s, end_s).
SourceBuilder = Callable[[str, Any, dict[str, Any]], tuple[Any, type, tuple[str, ...]]]


@dataclasses.dataclass(frozen=True)
class ReplayFormat:
    """One source format.

    Attributes
    ----------
    what : str
        What it is, for ``--help`` and errors.
    detect : callable
        ``detect(path) -> bool``: auto-detection picks this format for ``path``.
    build : callable or None
        Builds its source (:data:`SourceBuilder`); None for the SeqCSIST dataset, whose
        windows replace the front of the chain (:func:`pipeline.replay.plan.plan_replay`).
    """

    what: str
    detect: Callable[[Path], bool]
    build: SourceBuilder | None


def _is_dataset_npz(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"images", "targets", "traj_len"} <= set(z.files)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the .npz file ({exc})") from exc


def _has_images(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def _is_dataset(path: Path) -> bool:
    from sim.seqcsist_io import available_splits

    if path.is_file():
        return path.suffix.lower() == ".npz" and _is_dataset_npz(path)
    if (path / "image").is_dir() or (path / "annotation").is_dir():
        return True
    return not _has_images(path) and bool(available_splits(path))


def _is_array(path: Path) -> bool:
    suffix = path.suffix.lower()
    return path.is_file() and (suffix == ".npy" or (suffix == ".npz" and not _is_dataset(path)))


def _mcap(path: str, options: Any, timing: dict[str, Any]):
    info = recording_info(path)
    topics = options.topics or ("frames",)
    missing = [t for t in topics if t not in info.topics]
    if missing:
        raise ConfigError(f"{path} has no topic(s) {missing}; it holds {info.topics}")
    return McapSourceConfig(path=path, topics=topics, **timing), McapSource, topics


def _images(path: str, options: Any, timing: dict[str, Any]):
    config = FileSourceConfig(path=path, fps=options.fps or 25.0, **timing)
    return config, ImageFolderSource, ("frames",)


def _array(path: str, options: Any, timing: dict[str, Any]):
    config = ArraySourceConfig(path=path, fps=options.fps or 25.0, key=options.key, **timing)
    return config, ArraySource, ("frames",)


def _video(path: str, options: Any, timing: dict[str, Any]):
    return VideoSourceConfig(path=path, fps=options.fps or 0.0, **timing), VideoSource, ("frames",)


#: Format name -> format, in auto-detection order.
FORMATS: dict[str, ReplayFormat] = {
    "mcap": ReplayFormat("an MCAP recording (.mcap)",
                         lambda p: p.is_file() and p.suffix.lower() == ".mcap", _mcap),
    "seqcsist": ReplayFormat("a SeqCSIST dataset (official layout, a split .npz or a root)",
                             _is_dataset, None),
    "array": ReplayFormat("a frame stack (.npy, .npz)", _is_array, _array),
    "video": ReplayFormat(f"a video ({', '.join(VIDEO_SUFFIXES)})",
                          lambda p: p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES, _video),
    "images": ReplayFormat(f"a folder of numbered images ({', '.join(IMAGE_SUFFIXES)})",
                           _has_images, _images),
}


def detect_format(path: str | Path) -> str:
    """The name of the first format in :data:`FORMATS` that recognises ``path``.

    Raises
    ------
    ConfigError
        The path does not exist or no format recognises it.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    for name, fmt in FORMATS.items():
        if fmt.detect(path):
            return name
    kinds = "; ".join(f"{name}: {fmt.what}" for name, fmt in FORMATS.items())
    raise ConfigError(f"{path}: not a replayable source; expected one of: {kinds} "
                      f"(or pass --format)")
