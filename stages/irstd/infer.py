"""Inference of the learned detectors: weights → probability map → blobs.

:func:`detect_learned` is what :func:`stages.detector.detect` runs for ``kind="mshnet"`` or
``"dnanet"``:

1. the frame is normalised (:func:`stages.irstd.data.normalise`), reflect-padded to the
   network's stride, run through the network (one frame, inference mode, the torch threads
   the process set) and cropped back: a probability map (H, W) in 0…1;
2. the mask is ``probability > prob_threshold`` (default 0.5); its 8-connected components
   whose area is within [min_area, max_area] are blobs, at most ``max_blobs``, highest SNR
   first (the top-hat detector's rules);
3. each blob's columns are the top-hat detector's: the centroid of its pixels weighted by the
   white top-hat response (``kernel`` px, clipped at 0, + 1e-3 so a blob on a dark pixel has
   a centre), ``peak`` = the highest top-hat response in the blob (grey levels above the local
   background), ``area`` and ``snr`` = peak / the top-hat response's robust noise spread
   (1.4826 · MAD, :func:`stages.detector.tophat_threshold`); so the cropper, the unmixer and
   the tracker read learned blobs exactly as top-hat blobs.

Weights (:func:`load`) are read once per file and cached; the network is traced and frozen
(BatchNorm folded into the convolutions, about 2× faster on one core) when that reproduces
the eager outputs, else run eagerly.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import torch

from stages.detector import BLOB_COLUMNS, DetectorConfig, tophat_threshold
from stages.irstd.data import normalise
from stages.irstd.nets import build, pad_to_stride

#: Where the shipped weights live: ``models/weights/KIND.pt``.
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "models" / "weights"

_CACHE: dict[tuple[str, str], torch.nn.Module] = {}
_LOCK = threading.Lock()


def weights_path(kind: str, weights: str = "") -> Path:
    """The weights file of a detector: ``weights`` if given, else the shipped
    ``models/weights/KIND.pt``."""
    return Path(weights) if weights else WEIGHTS_DIR / f"{kind}.pt"


class _Frozen(torch.nn.Module):
    """A traced, frozen network with the eager one's ``stride``."""

    def __init__(self, module: torch.nn.Module, stride: int) -> None:
        super().__init__()
        self.module = module
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def load(kind: str, weights: str = "") -> torch.nn.Module:
    """The network of ``kind`` with its weights, in eval mode (cached per file).

    Raises
    ------
    FileNotFoundError
        The weights file is missing (the message names it).
    ValueError
        The file holds another kind of detector.
    """
    path = weights_path(kind, weights)
    key = (kind, str(path.resolve()))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if not path.is_file():
            raise FileNotFoundError(
                f"{kind} detector: weights file {path} not found (train one with "
                f"python -m stages.irstd.train --kind {kind} --out {path}, or set "
                "detector weights: PATH)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("kind") != kind:
            raise ValueError(f"{path} holds a {state.get('kind')!r} detector, not {kind!r}")
        net = build(kind, state["widths"], state["blocks"], state["s2d"],
                    state.get("refine", False))
        net.load_state_dict(state["state_dict"])
        net.eval()
        _CACHE[key] = _freeze(net)
        return _CACHE[key]


def _freeze(net: torch.nn.Module) -> torch.nn.Module:
    """Traced and frozen copy of ``net`` if it gives the same outputs, else ``net``."""
    try:
        with torch.inference_mode():
            probe = torch.randn(1, 1, 2 * net.stride, 3 * net.stride)
            frozen = torch.jit.freeze(torch.jit.trace(net, probe))
            other = torch.randn(1, 1, 3 * net.stride, 2 * net.stride)
            if torch.allclose(frozen(other), net(other), atol=1e-4, rtol=1e-4):
                return _Frozen(frozen, net.stride)
    except Exception:  # noqa: BLE001 - tracing is an optimisation only
        pass
    return net


def probability(image: np.ndarray, net: torch.nn.Module) -> np.ndarray:
    """Target probability (H, W) float32 of a raw frame (H, W)."""
    x = torch.from_numpy(normalise(image)[0])[None, None]
    x, (h, w) = pad_to_stride(x, net.stride)
    with torch.inference_mode():
        logits = net(x)
    return torch.sigmoid(logits[0, 0, :h, :w]).numpy()


def blobs_from_mask(image: np.ndarray, mask: np.ndarray, config: DetectorConfig
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Blobs (N, 5) of :data:`stages.detector.BLOB_COLUMNS` and the kept pixels (H, W) bool of
    a detection mask (see the module doc for the columns)."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                           connectivity=8)
    if n <= 1:
        return np.zeros((0, len(BLOB_COLUMNS))), np.zeros(img.shape, dtype=bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (config.kernel, config.kernel))
    response = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, kernel)
    step = config.sample_stride
    _, spread = tophat_threshold(response[::step, ::step], config.k, config.statistic)
    flat = np.flatnonzero(labels)
    lab = labels.ravel()[flat]
    value = response.ravel()[flat].astype(np.float64)
    weight = np.maximum(value, 0.0) + 1e-3
    rows, cols = np.divmod(flat, img.shape[1])
    total = np.bincount(lab, weights=weight, minlength=n)
    row = np.bincount(lab, weights=weight * rows, minlength=n) / total.clip(1e-12)
    col = np.bincount(lab, weights=weight * cols, minlength=n) / total.clip(1e-12)
    peak = np.zeros(n)
    np.maximum.at(peak, lab, np.maximum(value, 0.0))
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    blobs = np.column_stack([row, col, peak, area, peak / spread])
    ids = np.flatnonzero((area >= config.min_area) & (area <= config.max_area))
    ids = ids[ids > 0]
    ids = ids[np.argsort(-blobs[ids, 4], kind="stable")][: config.max_blobs]
    kept = np.zeros(n, dtype=bool)
    kept[ids] = True
    return blobs[ids], kept[labels]


def detect_with_net(image: np.ndarray, net: torch.nn.Module,
                    config: DetectorConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`detect_learned` with a given network (training-time validation; ``config``
    None = the defaults)."""
    config = config or DetectorConfig()
    return blobs_from_mask(image, probability(image, net) > config.prob_threshold, config)


def detect_learned(image: np.ndarray, config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Blobs (N, 5) and mask (H, W) bool of a frame for ``config.kind`` "mshnet"/"dnanet"."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must have shape (H, W), got {img.shape}")
    return detect_with_net(img, load(config.kind, config.weights), config)
