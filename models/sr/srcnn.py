"""SRCNN on the Qinit start (docs/reference.md §5.3).

x₀ = Qinit · y (the middle frame, 121 → 1089, reshaped 33×33) → conv9×9 1→32, ReLU →
conv5×5 32→16, ReLU → conv5×5 16→1 ("same" padding throughout) → the HR map in grey levels.
15 841 learned parameters (Table VII: 15.84 K, exact). Qinit is a buffer, fitted on the training
targets by the training harness (:meth:`models.base.UnmixingModel.set_qinit`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.sr.blocks import SingleFrameSR
from sim.geometry import HR


class SRCNN(SingleFrameSR):
    """See the module docstring (no options: the network is already tiny)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 9, padding=4)
        self.conv2 = nn.Conv2d(32, 16, 5, padding=2)
        self.conv3 = nn.Conv2d(16, 1, 5, padding=2)
        self.config = {}

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        x0 = (lr.flatten(1) @ self.qinit.T).view(-1, 1, HR, HR)
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x0)))))
