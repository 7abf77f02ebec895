"""RPCANet (Wu et al. 2024) as in the reference (docs/reference.md §5.7).

Robust-PCA unfolding: the map is split into a background B and a sparse target image T.
From D₀ = Qinit·y (N, 1, 33, 33) and T₀ = 0, each of 6 stages runs

- low-rank module: B = (D − T) + L(D − T), L = conv 1→C + BN + ReLU, ``llayers`` ×
  (conv C→C + BN + ReLU), conv C→1;
- sparse module: T = (T + D − B) − ε·S(T + D − B), S = conv 1→C + ReLU, ``slayers`` ×
  (conv C→C + ReLU), conv C→1, ε learned (init 0.01);
- merge module: D = M(B + T), M built like L with ``mlayers``.

All convolutions are 3×3 with biases, weights Xavier-normal. The map is the last T. Training
adds ``merge`` = MSE(last D, D₀) (weighted 0.1 against the map's MSE in the reference loss).
679 896 parameters, as in Table VII (0.68 M).

Reference bug: its stage loop passes D₀ to every stage and keeps each merge output only for the
loss, so the merge modules of stages 1–5 are computed and discarded and every stage starts from
the same D₀. RPCANet's own code (and its paper) feed each stage the previous stage's D, as we do
by default; ``faithful=True`` keeps the reference's behaviour.
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import UnmixingModel
from sim.geometry import HR, WINDOW
from sim.phi import phi_matrix


def conv_stack(channels: int, layers: int, batch_norm: bool) -> nn.Sequential:
    """conv 1→C (+BN) + ReLU, ``layers`` × (conv C→C (+BN) + ReLU), conv C→1; all 3×3."""
    mods: list[nn.Module] = []
    for c_in in [1] + [channels] * layers:
        mods.append(nn.Conv2d(c_in, channels, 3, padding=1))
        if batch_norm:
            mods.append(nn.BatchNorm2d(channels))
        mods.append(nn.ReLU())
    mods.append(nn.Conv2d(channels, 1, 3, padding=1))
    return nn.Sequential(*mods)


class Stage(nn.Module):
    """One decomposition stage (low-rank, sparse and merge modules): (D, T) → (D, T)."""

    def __init__(self, channels: int, slayers: int, llayers: int, mlayers: int) -> None:
        super().__init__()
        self.lowrank = conv_stack(channels, llayers, batch_norm=True)
        self.sparse = conv_stack(channels, slayers, batch_norm=False)
        self.epsilon = nn.Parameter(torch.tensor(0.01))
        self.merge = conv_stack(channels, mlayers, batch_norm=True)

    def forward(self, d, t):
        b = (d - t) + self.lowrank(d - t)
        r = t + d - b
        t = r - self.epsilon * self.sparse(r)
        return self.merge(b + t), t


class RpcaNet(UnmixingModel):
    """RPCANet on the middle frame; sizes as the reference's config (``channel`` = C).
    ``faithful`` feeds every stage D₀, as the reference does (see the module docstring)."""

    def __init__(self, stages: int = 6, slayers: int = 6, llayers: int = 3, mlayers: int = 3,
                 channels: int = 32, faithful: bool = False) -> None:
        super().__init__(phi_matrix())
        self.faithful = faithful
        self.stages = nn.ModuleList(Stage(channels, slayers, llayers, mlayers)
                                    for _ in range(stages))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
        self.config = {"stages": stages, "slayers": slayers, "llayers": llayers,
                       "mlayers": mlayers, "channels": channels, "faithful": faithful}

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        """Maps (B, 33, 33) from windows (B, 5, 11, 11); ``merge`` in training mode."""
        self.check_input(windows, frame_index)
        y = windows[:, WINDOW // 2].flatten(1)
        d0 = (y @ self.qinit.T).view(-1, 1, HR, HR)
        d, t = d0, torch.zeros_like(d0)
        for stage in self.stages:
            d, t = stage(d0 if self.faithful else d, t)
        aux = {"merge": torch.mean((d - d0) ** 2)} if self.training else {}
        return t.view(-1, HR, HR), aux
