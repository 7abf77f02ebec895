"""The one model interface shared by training, evaluation and the live unmixer.

Every unmixer is a ``torch.nn.Module`` subclass of :class:`Unmixer`:

``forward(windows, frame_index) -> (maps, aux_losses)``

- ``windows``: tensor of shape (B, 5, 11, 11), float32, raw grey levels; window b holds
  frames t−2 … t+2 of one trajectory/track, and the map is predicted for the middle frame t.
- ``frame_index``: tensor of shape (B,), int64, index t of the middle frame within its
  trajectory (0-based; SeqCSIST evaluates t = 2 … 17). Only time-aware models use it.
- ``maps``: tensor of shape (B, 33, 33), float32, brightness per HR cell (grey levels).
- ``aux_losses``: dict of named scalar tensors added to the training loss (may be empty);
  they are only computed when the model is in training mode.

Single-frame models use the middle frame ``windows[:, 2]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sim.geometry import PATCH, WINDOW


class Unmixer(nn.Module):
    """Base class: holds Φ and Qinit as buffers and checks input shapes."""

    #: True for models whose parameters are learned (ISTA has none).
    trainable: bool = True

    def __init__(self, phi, qinit=None) -> None:
        super().__init__()
        phi_t = torch.tensor(np.asarray(phi), dtype=torch.float32)  # (121, 1089)
        self.register_buffer("phi", phi_t)
        q = torch.zeros(phi_t.shape[1], phi_t.shape[0]) if qinit is None else qinit
        self.register_buffer("qinit", torch.as_tensor(q, dtype=torch.float32))  # (1089, 121)

    def set_qinit(self, qinit) -> None:
        """Replace Qinit, e.g. after fitting it on a training split (shape (1089, 121))."""
        self.qinit.copy_(torch.as_tensor(qinit, dtype=torch.float32))

    @staticmethod
    def check_input(windows: torch.Tensor, frame_index: torch.Tensor) -> None:
        if windows.ndim != 4 or tuple(windows.shape[1:]) != (WINDOW, PATCH, PATCH):
            raise ValueError(
                f"windows must have shape (B, {WINDOW}, {PATCH}, {PATCH}), "
                f"got {tuple(windows.shape)}"
            )
        if frame_index.shape != windows.shape[:1]:
            raise ValueError(
                f"frame_index must have shape ({windows.shape[0]},), got {tuple(frame_index.shape)}"
            )
