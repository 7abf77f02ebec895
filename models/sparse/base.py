"""The frame shared by the learned-ISTA family (docs/reference.md §5.6).

A model sees the middle frame y (B, 121) in grey levels, starts from x₀ = Qinit·y (B, 1089)
and runs its unrolled layers (:meth:`LearnedIsta.iterate`); the last iterate is the map.
Vectors are rows, so Φx reads ``x @ phi.T`` and a layer matrix W (out, in) acts as ``x @ W.T``.

The reference initialises some weights from Qinit (B = Qinit, W = I − Qinit·Φ…). Qinit is
fitted on the training split after the model is built, so :meth:`LearnedIsta.set_qinit`
re-runs that initialisation; the trainer calls it once, before any weights are loaded.

Training quirk (docs/reference.md §5.8, §8 #9): the reference regresses every output onto all
20 GT maps of its trajectory. That is a training-loop matter (``target_broadcast`` in
:class:`models.train.TrainConfig`), not part of these models.
"""

from __future__ import annotations

import numpy as np
import torch

from models.base import UnmixingModel
from sim.geometry import HR, WINDOW
from sim.phi import phi_matrix


def lista_threshold(phi: np.ndarray, lam: float = 0.4) -> float:
    """The reference's initial threshold λ / (1.001‖Φ‖₂²) (≈ 0.0465 for λ = 0.4)."""
    return float(lam / (1.001 * np.linalg.norm(phi, 2) ** 2))


class LearnedIsta(UnmixingModel):
    """Base class: middle frame → x₀ = Qinit·y → :meth:`iterate` → map (B, 33, 33).

    Subclasses create their parameters, call :meth:`init_from_qinit` at the end of their
    constructor, set ``self.config`` and implement :meth:`iterate`.
    """

    def __init__(self) -> None:
        super().__init__(phi_matrix())

    def init_from_qinit(self) -> None:
        """(Re-)initialise the weights the reference derives from Qinit; none by default."""

    def set_qinit(self, qinit) -> None:
        """Replace Qinit (1089, 121) and re-initialise the Qinit-derived weights from it."""
        super().set_qinit(qinit)
        with torch.no_grad():
            self.init_from_qinit()

    def iterate(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The unrolled layers: y (B, 121) grey levels, x₀ (B, 1089) → x (B, 1089)."""
        raise NotImplementedError

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        """Maps (B, 33, 33) from windows (B, 5, 11, 11); no auxiliary losses."""
        self.check_input(windows, frame_index)
        y = windows[:, WINDOW // 2].flatten(1)
        x = self.iterate(y, y @ self.qinit.T)
        return x.view(-1, HR, HR), {}
