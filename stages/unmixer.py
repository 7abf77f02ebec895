"""Unmixer: one batched forward pass of a registered model over all windows of a frame.

Any model of :mod:`models.registry` serves, loaded with its weights by
:func:`models.weights.load_model`. All windows of one frame (one :class:`Windows` message)
go through the model in one ``forward`` under :func:`torch.inference_mode`.

**Per-frame feature cache.** A track's frame is part of 5 consecutive windows. For models
that split into per-frame and per-window work (``shares_frame_features``: DeRefNet's unfolding
stage does not depend on the window), the stage keeps each frame's features in a
least-recently-used cache keyed by the frame patch's exact bytes, so a new window costs one
frame's unfolding plus one window's alignment and reconstruction. The key is the data itself
(so it needs no sensor: equal bytes give equal features whichever sensor took them):
a patch cut at another origin or with another background subtracted is another key, so
cached and recomputed maps are the same (the cropper's background is the median of a
window's ring pixels, which on integer frames rarely changes from one window to the next).
``summary()`` reports the hits and misses. The cache is the stage's only state; losing it
costs time, never correctness.

**Channels-last.** On the CPU the model's convolutions run in channels-last memory format
(``channels_last``, default on): oneDNN's faster layout for these 32-channel 33×33 maps.

**Shedding load** (``frame_budget_ms``): see :mod:`stages.shedding`.

The torch thread count (``threads``, default 1) is applied before every forward pass
(:func:`stages.threads.use_torch_threads`), so it holds in a single-process chain too.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.config import ConfigError
from models.precision import PRECISIONS, resolve_precision, torch_dtype
from sim.geometry import HR, PATCH, SIGMA, WINDOW
from stages.base import Stage
from stages.messages import Maps, Message, Windows, frame_header
from stages.shedding import WindowShedder, centres_of_light
from stages.threads import use_torch_threads

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnmixerConfig:
    """Options of :class:`Unmixer`.

    Attributes
    ----------
    model : str
        Registered model name (``python -m models list`` shows them).
    weights : str or None
        Weights file; None takes the model's shipped default weights.
    threads : int
        Torch intra-op threads (see :mod:`stages.threads`).
    device : str
        Torch device, "cpu" (default) or e.g. "cuda".
    feature_cache : int
        Frames whose features are kept (models with ``shares_frame_features``); 0 turns the
        cache off. 2048 frames of DeRefNet features take 9 MB.
    channels_last : bool
        Run the model in channels-last memory format on the CPU.
    frame_budget_ms : float or None
        Shed load per window (:mod:`stages.shedding`): when a frame's windows would take
        longer than this (wall ms), unmix only as many as fit and give the others their
        track's last map, moved with the group. None (default): unmix every window, and let
        the queue in front drop whole frames when the unmixer falls behind.
    precision : str
        "fp32" (default), "bf16", or "auto": bf16 where the CPU computes it natively, fp32
        elsewhere (:mod:`models.precision`; measured accuracy and speed in the README).
    psf_sigma : float
        PSF std (px) of the sensor (the sensor profile's, :mod:`sim.sensor`): the model is
        told it; weights trained for another σ say so at start-up, in one line with the fix.
    """

    model: str = "derefnet"
    weights: str | None = None
    threads: int = 1
    device: str = "cpu"
    feature_cache: int = 2048
    channels_last: bool = True
    frame_budget_ms: float | None = None
    precision: str = "fp32"
    psf_sigma: float = SIGMA

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.frame_budget_ms is not None and not self.frame_budget_ms > 0:
            raise ValueError(f"frame_budget_ms must be > 0 or null, got {self.frame_budget_ms}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.feature_cache < 0:
            raise ValueError(f"feature_cache must be >= 0, got {self.feature_cache}")


class Unmixer(Stage):
    """Windows → HR maps, one :class:`Maps` message per :class:`Windows` message.

    Parameters
    ----------
    config : UnmixerConfig, optional
    model : torch.nn.Module, optional
        A ready model with the :class:`models.base.UnmixingModel` interface; when given, no weights
        are loaded (tests, or a caller that already holds the model).
    """

    Config = UnmixerConfig
    INPUTS = ("windows",)
    OUTPUT = "maps"
    SENSOR_FIELDS = {"psf_sigma": "psf_sigma"}
    # the feature cache changes the time spent, not the maps; with ``frame_budget_ms`` each
    # replica's shedder reuses the maps that replica made
    REPLICABLE = True

    def __init__(self, config: UnmixerConfig | None = None, model: Any = None) -> None:
        super().__init__(config)
        self.model = model
        #: Metadata of the loaded weights (empty for an injected model).
        self.meta: dict = {}
        #: Dtype of the model's inputs, set by :meth:`start` (None: as given).
        self.dtype = None
        self._features: OrderedDict[bytes, Any] = OrderedDict()  # frame bytes -> (F,) tensor
        self.cache_hits = 0
        self.cache_misses = 0
        budget = self.config.frame_budget_ms
        self.shedder = WindowShedder(budget) if budget is not None else None

    def start(self) -> None:
        """Set the torch thread count, load the model, put it in channels-last format (CPU)
        and run it once, so that kernel set-up and compilation happen before the first frame
        (torch is imported here, not at module import, so stages that do not unmix never pay
        for it)."""
        import torch

        use_torch_threads(self.config.threads)
        if self.model is None:
            from models.weights import load_model, psf_mismatch

            self.model, self.meta = load_model(self.config.model, self.config.weights)
            logger.info("unmixer: loaded %s (%s)", self.config.model, self.meta.get("sha256", ""))
            mismatch = psf_mismatch(self.config.model, self.meta, self.config.psf_sigma)
            if mismatch:
                logger.warning("unmixer: %s", mismatch)
        if hasattr(self.model, "set_psf"):  # an injected module may not know the optics
            self.model.set_psf(self.config.psf_sigma)
        precision = resolve_precision(self.config.precision, self.config.device)
        self.dtype = torch_dtype(precision)
        self.model.to(self.config.device, self.dtype).eval()
        if self.config.channels_last and self.config.device == "cpu":
            self.model.to(memory_format=torch.channels_last)
        logger.info("unmixer: %s in %s", self.config.model, precision)
        with torch.inference_mode():  # first call: kernel set-up, before the first frame
            self.model(torch.zeros(1, WINDOW, PATCH, PATCH, device=self.config.device,
                                   dtype=self.dtype),
                       torch.full((1,), WINDOW // 2, device=self.config.device))

    @property
    def caches_features(self) -> bool:
        """Whether windows go through the per-frame feature cache."""
        return self.config.feature_cache > 0 and getattr(self.model, "shares_frame_features",
                                                         False)

    def unmix(self, patches: np.ndarray, frame_index: np.ndarray) -> np.ndarray:
        """One forward pass.

        Parameters
        ----------
        patches : ndarray of shape (N, 5, 11, 11), float32 grey levels
            (read-only arrays, as decoded from the wire, are copied first)
        frame_index : ndarray of shape (N,), int64

        Returns
        -------
        ndarray of shape (N, 33, 33), float32
        """
        import torch

        if len(patches) == 0:
            return np.zeros((0, HR, HR), dtype=np.float32)
        if self.model is None:
            self.start()
        use_torch_threads(self.config.threads)
        device = self.config.device
        with torch.inference_mode():
            windows = torch.from_numpy(np.require(patches, np.float32, ["C", "W"]))
            index = torch.from_numpy(np.asarray(frame_index, dtype=np.int64)).to(device)
            if self.caches_features:
                maps, _ = self.model.window_maps(self._frame_features(windows), index)
            else:
                maps, _ = self.model(windows.to(device, self.dtype), index)
            return maps.detach().to("cpu", torch.float32).numpy().reshape(-1, HR, HR)

    def _frame_features(self, windows):
        """Features (N, 5, F) of windows (N, 5, 11, 11): cached frames looked up, the others
        computed in one batch and cached (least recently used evicted)."""
        import torch

        frames = windows.reshape(-1, *windows.shape[2:])
        keys = [f.numpy().tobytes() for f in frames]
        first = {}  # each missing frame's first row
        for row, k in enumerate(keys):
            if k not in self._features:
                first.setdefault(k, row)
        self.cache_misses += len(first)
        self.cache_hits += len(keys) - len(first)
        if first:
            fresh = frames[list(first.values())].to(self.config.device, self.dtype)
            computed, _ = self.model.frame_features(fresh)
            self._features.update(zip(first, computed, strict=True))
        for k in keys:
            self._features.move_to_end(k)
        features = torch.stack([self._features[k] for k in keys])
        while len(self._features) > self.config.feature_cache:
            self._features.popitem(last=False)
        return features.view(*windows.shape[:2], -1)

    def summary(self) -> dict[str, Any] | None:
        """Frame-feature cache hits and misses (frames), for models that share features, and
        the shedding counters (:meth:`WindowShedder.summary`) when it sheds load."""
        out = {}
        if self.caches_features:
            out["feature_cache"] = {"hits": self.cache_hits, "misses": self.cache_misses}
        if self.shedder is not None:
            out["shedding"] = self.shedder.summary()
        return out or None

    def _unmix_within_budget(self, msg: Windows, index: np.ndarray) -> np.ndarray:
        """Maps of a frame's windows, some reused (:class:`~stages.shedding.WindowShedder`)."""
        ids = [w.blob_id for w in msg.windows]
        mask = self.shedder.choose(ids, msg.sensor)
        tic = time.perf_counter()
        fresh = self.unmix(msg.patches[mask], index[mask])
        self.shedder.record_cost(1e3 * (time.perf_counter() - tic), int(mask.sum()))
        maps = np.zeros((len(ids), HR, HR), dtype=np.float32)
        maps[mask] = fresh
        return self.shedder.complete(ids, mask, maps, centres_of_light(msg.patches), msg.sensor)

    def process(self, msg: Message) -> Iterable[Message]:
        if not isinstance(msg, Windows):
            raise ConfigError(
                f"the unmixer takes Windows messages, got {type(msg).__name__}; "
                "subscribe it to the windows topic"
            )
        index = np.array([w.frame_index for w in msg.windows], dtype=np.int64)
        if self.shedder is None:
            maps = self.unmix(msg.patches, index)
        else:
            maps = self._unmix_within_budget(msg, index)
        return [
            Maps(
                **frame_header(msg),
                windows=msg.windows,
                patches=msg.patches,
                maps=np.ascontiguousarray(maps, dtype=np.float32),
            )
        ]
