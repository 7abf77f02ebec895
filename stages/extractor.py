"""Extractor: HR maps → sub-pixel points in frame coordinates.

The shared :func:`models.extract.extract_points` finds the points of each map in PATCH
pixels (integer = centre of a patch pixel); a window's origin is the frame pixel of patch
pixel (0, 0), so ``frame = origin + patch`` exactly. Each point carries the index of its window
in the frame's message (``window_id``).
The stage's options are those of :class:`models.extract.ExtractorConfig` (the fits are
single-threaded compiled loops: no torch threads to set; the noise level is estimated per
window unless ``noise_grey`` is set).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from models.config import ConfigError
from models.extract import ExtractorConfig, extract_points
from sim.geometry import HR, PATCH, WINDOW
from stages.base import Stage
from stages.messages import Maps, Message, Point, Points, WindowInfo, frame_header

#: ``extract(maps (N, 33, 33), windows (N, 5, 11, 11), config) -> N arrays (n_i, 3)``
#: of (row, col, score) in patch pixels.
ExtractFn = Callable[[np.ndarray, np.ndarray, ExtractorConfig, np.ndarray], Sequence[np.ndarray]]


def to_frame_points(
    patch_points: Sequence[np.ndarray], windows: Sequence[WindowInfo]
) -> tuple[Point, ...]:
    """Shift per-window patch points by their window origins.

    Parameters
    ----------
    patch_points : sequence of N ndarrays of shape (n_i, 3)
        (row, col, score) in patch pixels.
    windows : sequence of N WindowInfo

    Returns
    -------
    tuple of Point, window by window: (origin_row + row, origin_col + col, score, window index).
    """
    if len(patch_points) != len(windows):
        raise ValueError(
            f"the extractor returned {len(patch_points)} point sets for {len(windows)} windows"
        )
    points = []
    for index, (found, info) in enumerate(zip(patch_points, windows, strict=True)):
        for row, col, score in np.asarray(found, dtype=np.float64).reshape(-1, 3):
            points.append(
                Point(
                    row=info.origin_row + float(row),
                    col=info.origin_col + float(col),
                    score=float(score),
                    window_id=index,
                )
            )
    return tuple(points)


class Extractor(Stage):
    """Maps → one :class:`Points` message per frame.

    Parameters
    ----------
    config : ExtractorConfig, optional
    extract : callable, optional
        Replaces :func:`models.extract.extract_points` (tests).
    """

    Config = ExtractorConfig
    INPUTS = ("maps",)
    OUTPUT = "points"
    SENSOR_FIELDS = {"psf_sigma": "psf_sigma", "noise_sigma": "noise_grey"}
    REPLICABLE = True

    def __init__(
        self, config: ExtractorConfig | None = None, extract: ExtractFn = extract_points
    ) -> None:
        super().__init__(config)
        self.extract = extract

    def start(self) -> None:
        """Run the fits once on a blank window, so that their compilation (or the loading of
        the compiled code from the disk cache) happens before the first frame."""
        self.extract(np.zeros((1, HR, HR)), np.zeros((1, WINDOW, PATCH, PATCH)), self.config,
                     np.full(1, 255.0))

    def process(self, msg: Message) -> Iterable[Message]:
        if not isinstance(msg, Maps):
            raise ConfigError(
                f"the extractor takes Maps messages, got {type(msg).__name__}; "
                "subscribe it to the maps topic"
            )
        found = self.extract_windows(msg) if msg.windows else []
        points = to_frame_points(found, msg.windows)
        return [Points(**frame_header(msg), points=points)]

    def extract_windows(self, msg: Maps) -> Sequence[np.ndarray]:
        """Points (row, col, score) in patch pixels of every window of ``msg``."""
        # frames clip (at their dtype's maximum, or as configured in the cropper) before the
        # cropper subtracts each window's background
        saturation = np.array([w.saturation - w.background for w in msg.windows], np.float64)
        return self.extract(msg.maps, msg.patches, self.config, saturation)
