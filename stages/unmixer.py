"""Unmixer: one batched forward pass of a registered model over all windows of a frame.

Any model of :mod:`models.registry` serves, loaded with its weights by
:func:`models.weights.load_model`. All windows of one frame (one :class:`Windows` message)
go through the model in one ``forward`` under :func:`torch.inference_mode`. The stage is
stateless, so several unmixer processes can share a windows topic.

The torch thread count (``threads``, default 1) is applied before every forward pass
(:func:`stages.threads.use_torch_threads`), so it holds in a single-process chain too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.config import ConfigError
from sim.geometry import HR
from stages.base import Stage
from stages.messages import Maps, Message, Windows
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
    """

    model: str = "derefnet"
    weights: str | None = None
    threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


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

    def __init__(self, config: UnmixerConfig | None = None, model: Any = None) -> None:
        super().__init__(config)
        self.model = model
        #: Metadata of the loaded weights (empty for an injected model).
        self.meta: dict = {}

    def start(self) -> None:
        """Set the torch thread count and load the model (torch is imported here, not at
        module import, so stages that do not unmix never pay for it)."""
        use_torch_threads(self.config.threads)
        if self.model is None:
            from models.weights import load_model

            self.model, self.meta = load_model(self.config.model, self.config.weights)
            logger.info("unmixer: loaded %s (%s)", self.config.model, self.meta.get("sha256", ""))
        self.model.to(self.config.device).eval()

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
            index = torch.from_numpy(np.asarray(frame_index, dtype=np.int64))
            maps, _ = self.model(windows.to(device), index.to(device))
            return maps.detach().to("cpu", torch.float32).numpy().reshape(-1, HR, HR)

    def process(self, msg: Message) -> Iterable[Message]:
        if not isinstance(msg, Windows):
            raise ConfigError(
                f"the unmixer takes Windows messages, got {type(msg).__name__}; "
                "subscribe it to the windows topic"
            )
        index = np.array([w.frame_index for w in msg.windows], dtype=np.int64)
        maps = self.unmix(msg.patches, index)
        return [
            Maps(
                seq=msg.seq,
                t_source_ns=msg.t_source_ns,
                windows=msg.windows,
                patches=msg.patches,
                maps=np.ascontiguousarray(maps, dtype=np.float32),
            )
        ]
