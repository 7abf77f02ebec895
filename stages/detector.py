"""Blob detector: white top-hat + adaptive threshold + 8-connected components.

``kind="tophat"`` (default) detects blobs in every :class:`~stages.messages.Frame`:

1. white top-hat ``I − open(I)`` with an elliptical structuring element of side
   ``kernel`` px (2–3× the target extent) removes the background and the gradient;
2. the threshold is ``centre + k · spread`` of the top-hat response, with
   ``statistic="robust"``: median + k · 1.4826 · MAD (insensitive to the targets themselves),
   or ``statistic="meanstd"``: mean + k · std; with ``local_window`` (11 px for clutter;
   default 0 = off) it is raised, pixel by pixel, to the local mean + k · local std of the
   response over that window, the pixels above the global threshold left out (so a target does
   not raise its own threshold): cloud edges, horizons and building edges leave a strong
   top-hat response that one global σ takes for targets (``python -m stages.detector_eval
   --frames 200 --scenes 20 --scene builtin --amplitude A``: at A = 40, Fa 1.1e-3 → 3.0e-5 at
   the same Pd of 100 %; at A = 80, 2.5e-3 → 4.6e-4 with Pd 100 → 99.4 %; windows of 31 and 15
   px left 3.1e-4 and 9.6e-5 at A = 40; flat scenes, σ = 1 and 3: Pd 100 %, Fa 0 either way).
   It is off by default: its box filters cost the live chain's detector 0.07 of a core at 25
   frames/s of 256² (CPU median 0.23 against 0.15 in a soak), which flat scenes do not need;
3. 8-connected components of the mask whose area is within [min_area, max_area] are blobs;
   a blob's position is the centroid of its pixels weighted by their top-hat response.

``kind="external"`` runs no detector: the stage re-publishes (after checking them) the
:class:`~stages.messages.Blobs` messages of an outside detector, so the cropper always reads
blobs from one topic. The runner subscribes this stage to the outside detector's topic
(for example ``external_blobs``) instead of ``frames``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from models.config import ConfigError
from stages.base import Stage
from stages.messages import Blob, Blobs, Frame, Message, frame_header
from stages.ratelimit import LimitedWarnings
from stages.threads import use_torch_threads

logger = logging.getLogger(__name__)

KINDS = ("tophat", "external", "mshnet", "dnanet")
#: Kinds backed by a network (:mod:`stages.irstd`; torch is imported only for these).
LEARNED_KINDS = ("mshnet", "dnanet")
STATISTICS = ("robust", "meanstd")
MAD_TO_STD = 1.4826  # σ = 1.4826 · MAD for Gaussian noise


@dataclass(frozen=True)
class DetectorConfig:
    """Options of :class:`Detector`.

    Attributes
    ----------
    kind : str
        "tophat" (detect in frames) or "external" (pass through an outside detector's blobs).
    kernel : int
        Side of the elliptical top-hat structuring element (px, odd).
    k : float
        Threshold in units of the top-hat response's spread above its centre.
    statistic : str
        "robust" (median + k·1.4826·MAD) or "meanstd" (mean + k·std).
    min_area, max_area : int
        Area gate of a blob (px).
    max_blobs : int
        At most this many blobs per frame are kept, highest SNR first (guards the chain
        against a flood of false alarms).
    sample_stride : int
        The threshold statistics are estimated on every ``sample_stride``-th pixel along each
        axis (2 = a quarter of the pixels: the medians cost 4× less, the estimate barely moves).
    local_window : int
        Side of the window of the local threshold (px, odd; 0 = the global threshold only;
        11 for cluttered scenes).
    weights : str
        Learned kinds: the weights file ("" = the shipped ``models/weights/KIND.pt``).
    prob_threshold : float
        Learned kinds: a pixel is a target pixel where the network's probability exceeds
        this (0 < p < 1).
    """

    kind: str = "tophat"
    kernel: int = 9
    k: float = 8.0
    statistic: str = "robust"
    min_area: int = 2
    max_area: int = 64
    max_blobs: int = 64
    sample_stride: int = 2
    local_window: int = 0
    weights: str = ""
    prob_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown detector kind {self.kind!r}; expected one of {KINDS}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r}; expected one of {STATISTICS}")
        if not self.k > 0:
            raise ValueError(f"k (the threshold, in noise standard deviations) must be > 0, "
                             f"got {self.k}")
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd size >= 3 px, got {self.kernel}")
        if not 1 <= self.min_area <= self.max_area:
            raise ValueError(
                f"area gate {self.min_area}..{self.max_area} is invalid; use 1 <= min <= max"
            )
        if self.local_window and (self.local_window < 3 or self.local_window % 2 == 0):
            raise ValueError(f"local_window must be 0 or an odd size >= 3 px, got "
                             f"{self.local_window}")
        if not 0 < self.prob_threshold < 1:
            raise ValueError(f"prob_threshold must be within (0, 1), got {self.prob_threshold}")
        if self.max_blobs < 1 or self.sample_stride < 1:
            raise ValueError(
                f"max_blobs and sample_stride must be >= 1, got {self.max_blobs} and "
                f"{self.sample_stride}"
            )


#: Columns of the array returned by :func:`detect_blobs`.
BLOB_COLUMNS = ("row", "col", "peak", "area", "snr")


def tophat_threshold(response: np.ndarray, k: float, statistic: str) -> tuple[float, float]:
    """Threshold and noise spread of a top-hat response.

    Parameters
    ----------
    response : ndarray of shape (H, W), float32
    k : float
    statistic : {"robust", "meanstd"}

    Returns
    -------
    threshold : float
        centre + k · spread.
    spread : float
        Noise standard deviation estimate (grey levels), at least 1e-6.
    """
    if statistic == "robust":
        centre = float(np.median(response))
        spread = MAD_TO_STD * float(np.median(np.abs(response - centre)))
    else:
        centre = float(response.mean())
        spread = float(response.std())
    spread = max(spread, 1e-6)
    return centre + k * spread, spread


def local_threshold(response: np.ndarray, threshold: float, k: float, window: int
                    ) -> np.ndarray:
    """Per-pixel threshold (H, W) float32: the larger of ``threshold`` and the local mean + k ·
    local std of ``response`` over a ``window``² box, computed from the pixels at or below
    ``threshold`` only (candidate targets left out), edges mirrored."""
    keep = (response <= threshold).astype(np.float32)
    background = response * keep
    box = (window, window)

    def local_sum(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, box, normalize=False, borderType=cv2.BORDER_REFLECT)

    count = np.maximum(local_sum(keep), 1.0)
    mean = local_sum(background) / count
    std = np.sqrt(np.maximum(local_sum(background * background) / count - mean * mean, 0.0))
    return np.maximum(np.float32(threshold), mean + np.float32(k) * std)


class Detection(NamedTuple):
    """What :func:`detect_counted` finds in a frame: ``blobs`` (N, 5) and ``mask`` (H, W) as
    :func:`detect` returns them, and ``over_cap``, the blobs left out by ``max_blobs``."""

    blobs: np.ndarray
    mask: np.ndarray
    over_cap: int


def tophat_response(image: np.ndarray, config: DetectorConfig
                    ) -> tuple[np.ndarray, float, float]:
    """White top-hat response (H, W) float32 of a frame, its global threshold and its noise
    spread (:func:`tophat_threshold` on every ``sample_stride``-th pixel)."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must have shape (H, W), got {img.shape}")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (config.kernel, config.kernel))
    response = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, kernel)
    step = config.sample_stride
    threshold, spread = tophat_threshold(response[::step, ::step], config.k, config.statistic)
    return response, threshold, spread


def component_blobs(mask: np.ndarray, response: np.ndarray, spread: float,
                    config: DetectorConfig, floor: float = 0.0) -> Detection:
    """The blobs of a detection mask: its 8-connected components within the area gate, at
    most ``max_blobs`` of them, highest SNR first.

    Each blob's centroid weighs its pixels by ``max(response, 0) + floor`` (a learned mask
    may hold pixels whose top-hat response is not positive), ``peak`` is its highest
    response and ``snr`` = peak / ``spread``.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                           connectivity=8)
    if n <= 1:
        return Detection(np.zeros((0, len(BLOB_COLUMNS))), np.zeros(mask.shape, bool), 0)
    flat = np.flatnonzero(labels)  # pixels of some component
    lab = labels.ravel()[flat]
    value = np.maximum(response.ravel()[flat].astype(np.float64), 0.0)
    weight = value + floor
    rows, cols = np.divmod(flat, mask.shape[1])
    total = np.bincount(lab, weights=weight, minlength=n)
    row = np.bincount(lab, weights=weight * rows, minlength=n) / np.maximum(total, 1e-12)
    col = np.bincount(lab, weights=weight * cols, minlength=n) / np.maximum(total, 1e-12)
    peak = np.zeros(n)
    np.maximum.at(peak, lab, value)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    blobs = np.column_stack([row, col, peak, area, peak / spread])
    ids = np.flatnonzero((area >= config.min_area) & (area <= config.max_area))
    ids = ids[ids > 0]  # label 0 is the background
    ids = ids[np.argsort(-blobs[ids, 4], kind="stable")]
    over_cap = max(0, len(ids) - config.max_blobs)
    ids = ids[: config.max_blobs]
    kept = np.zeros(n, dtype=bool)
    kept[ids] = True
    return Detection(blobs[ids], kept[labels], over_cap)


def detect_counted(image: np.ndarray, config: DetectorConfig = DetectorConfig()) -> Detection:
    """:func:`detect`, with the number of blobs ``max_blobs`` left out."""
    if config.kind in LEARNED_KINDS:
        from stages.irstd.infer import detect_learned

        return detect_learned(image, config)
    response, threshold, spread = tophat_response(image, config)
    if config.local_window:
        threshold = local_threshold(response, threshold, config.k, config.local_window)
    return component_blobs(response > threshold, response, spread, config)


def detect(image: np.ndarray, config: DetectorConfig = DetectorConfig()) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Blob detection in one frame: the blobs and the mask of their pixels.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Raw intensities (any real dtype).
    config : DetectorConfig

    Returns
    -------
    blobs : ndarray of shape (N, 5), float64
        Columns :data:`BLOB_COLUMNS`: intensity-weighted centroid (row, col) in frame pixels,
        ``peak`` = highest top-hat response in the blob (grey levels above the local
        background), ``area`` (px) and ``snr`` = peak / noise spread. Sorted by decreasing SNR.
    mask : ndarray of shape (H, W), bool
        The pixels of the blobs kept (for the pixel metrics of :mod:`stages.detection_metrics`).

    For ``kind`` "mshnet" or "dnanet" the mask is the network's thresholded probability map
    and the columns are the same (:func:`stages.irstd.infer.detect_learned`; torch is
    imported on the first such call).
    """
    blobs, mask, _ = detect_counted(image, config)
    return blobs, mask


def detect_blobs(image: np.ndarray, config: DetectorConfig = DetectorConfig()) -> np.ndarray:
    """The blobs of :func:`detect` (N, 5), without their mask."""
    return detect(image, config)[0]


def blob_records(blobs: np.ndarray) -> tuple[Blob, ...]:
    """Convert a (N, 5) :func:`detect_blobs` array into :class:`Blob` records."""
    return tuple(
        Blob(row=float(r), col=float(c), peak=float(p), area=int(a), snr=float(s))
        for r, c, p, a, s in blobs
    )


class Detector(Stage):
    """Frames → blobs (``kind`` "tophat", "mshnet", "dnanet"), or outside blobs → blobs
    (``kind="external"``).

    Emits one :class:`Blobs` message per input message, with the input's ``seq`` and
    ``t_source_ns``. At most ``max_blobs`` blobs per frame go on, highest SNR first; the
    others are counted in :attr:`truncated` and logged through a rate limiter (a flood of
    false alarms, e.g. a detector threshold set too low on a cluttered scene). In external
    mode, invalid blobs (:meth:`Blob.is_valid`: a non-finite field, an area ≤ 0, a position
    beyond ±10⁶ px) are dropped first and counted in :attr:`rejected`. Blobs at the frame's
    border are kept: the cropper pads the part of a window outside the frame with the
    frame's median and flags the window (:class:`stages.cropper.CropWindow`).
    """

    Config = DetectorConfig
    INPUTS = ("frames",)
    OUTPUT = "blobs"

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__(config)
        #: External blobs dropped as invalid (:meth:`Blob.is_valid`).
        self.rejected = 0
        #: Blobs left out beyond ``max_blobs`` per frame.
        self.truncated = 0
        self.warnings = LimitedWarnings(logger)
        if self.config.kind in LEARNED_KINDS:  # a missing weights file fails at start-up
            from stages.irstd.infer import load

            load(self.config.kind, self.config.weights)

    def process(self, msg: Message) -> Iterable[Message]:
        if self.config.kind in LEARNED_KINDS:
            use_torch_threads(1)  # one frame per call: a second thread costs more than it gains
        return self._process(msg)

    def _process(self, msg: Message) -> Iterable[Message]:
        if self.config.kind != "external":
            if not isinstance(msg, Frame):
                raise ConfigError(
                    f"a {self.config.kind} detector takes Frame messages, got "
                    f"{type(msg).__name__}; subscribe it to the frames topic (or use kind: "
                    "external for blobs)"
                )
            found = detect_counted(msg.image, self.config)
            if found.over_cap:
                self._truncated(msg.seq, found.over_cap, "")
            return [Blobs(**frame_header(msg), blobs=blob_records(found.blobs))]
        if not isinstance(msg, Blobs):
            raise ConfigError(
                f"an external detector takes Blobs messages, got {type(msg).__name__}; "
                "subscribe it to the outside detector's blobs topic"
            )
        valid = [b for b in msg.blobs if b.is_valid()]
        if len(valid) < len(msg.blobs):
            self.rejected += len(msg.blobs) - len(valid)
            self.warnings.warn("invalid", f"seq {msg.seq}: dropped {len(msg.blobs) - len(valid)} "
                                          "invalid external blobs")
        if len(valid) > self.config.max_blobs:
            self._truncated(msg.seq, len(valid) - self.config.max_blobs, "external ")
            valid = sorted(valid, key=lambda b: -b.snr)[: self.config.max_blobs]
        return [Blobs(**frame_header(msg), blobs=tuple(valid))]

    def _truncated(self, seq: int, count: int, which: str) -> None:
        self.truncated += count
        self.warnings.warn("truncated", f"seq {seq}: kept the {self.config.max_blobs} "
                                        f"highest-SNR of {self.config.max_blobs + count} "
                                        f"{which}blobs (max_blobs)")

    def stop(self) -> None:
        self.warnings.flush()

    def summary(self) -> dict[str, int]:
        """The blobs left out beyond ``max_blobs`` and (external mode) dropped as invalid."""
        out = {"truncated": self.truncated}
        if self.config.kind == "external":
            out["rejected"] = self.rejected
        return out
