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

import numpy as np
import torch

from models.weights import WeightsError
from stages.detector import Detection, DetectorConfig, component_blobs, tophat_response
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
    WeightsError
        The weights file is missing (the message names it and the fix), or holds another
        kind of detector: a user error, reported in one line.
    """
    path = weights_path(kind, weights)
    key = (kind, str(path.resolve()))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if not path.is_file():
            raise WeightsError(
                f"{kind} detector: weights file {path} not found (train one with "
                f"python -m stages.irstd.train --kind {kind} --out {path}, or set "
                "detector weights: PATH)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("kind") != kind:
            raise WeightsError(f"{path} holds a {state.get('kind')!r} detector, not {kind!r}; "
                               f"set the detector's weights to a {kind} weights file")
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


def detect_with_net(image: np.ndarray, net: torch.nn.Module,
                    config: DetectorConfig | None = None) -> Detection:
    """:func:`detect_learned` with a given network (training-time validation; ``config``
    None = the defaults): the thresholded probability map's components as blobs
    (:func:`stages.detector.component_blobs`; a pixel's centroid weight gets 1e-3 on top of
    its clipped top-hat response, so a blob on a dark pixel still has a centre)."""
    config = config or DetectorConfig()
    response, _, spread = tophat_response(image, config)
    mask = probability(image, net) > config.prob_threshold
    return component_blobs(mask, response, spread, config, floor=1e-3)


def detect_learned(image: np.ndarray, config: DetectorConfig) -> Detection:
    """Blobs (N, 5), mask (H, W) bool and the blobs over ``max_blobs`` of a frame for
    ``config.kind`` "mshnet"/"dnanet"."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must have shape (H, W), got {img.shape}")
    return detect_with_net(img, load(config.kind, config.weights), config)
