"""FastUnmixer: a multi-frame CNN at LR resolution with a ×3 pixel-shuffle head.

Built for the live pipeline on a CPU (DeRefNet costs ~1 GMAC per window; this ~60 MMAC).
The 5 frames of a window enter as 5 channels at 11×11 (early fusion; the targets move
< 0.05 px per frame, so no alignment is needed at this scale), pass a stack of residual
blocks, and a conv → PixelShuffle(3) → conv head produces the 33×33 map:

windows (B, 5, 11, 11) / scale → conv3×3 5→C → n × [conv-ReLU-conv + skip] →
conv3×3 C→9·C_hr → PixelShuffle(3) → ReLU → conv3×3 C_hr→1 → × scale → maps (B, 33, 33).

With ``grid_head`` a :class:`~models.layers.grid_head.GridHead` reads the HR features and the
map; ``set_output("grid")`` makes :meth:`forward` return its maps instead (the ``grid`` mode's
output, trained on the snapped truth; the points extractor always reads the splat map).
With ``psf_input`` the PSF σ of the data (:meth:`~models.base.UnmixingModel.set_psf`) enters as
a sixth input channel, constant (σ − 0.5) / 0.1 over the window, so one set of weights serves
every lens in its training range; weights without it load into such a model with that
channel's weights at zero (:meth:`FastUnmixer.adapt_state`): the model then starts as it was.
``grid_branch`` = n ≥ 1 gives the head its own copy of the last n residual blocks and of the
upsampling; ``grid_flips`` makes the grid output, outside autograd (evaluation, validation),
the mean over the window's four flips (:func:`~models.layers.grid_head.flip_average`), while
training steps take one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import UnmixingModel
from models.layers.grid_head import GridHead, flip_average, init_branch
from models.layers.residual import ResidualBlockNoBN
from sim.geometry import HR, RATIO, SIGMA, WINDOW
from sim.phi import phi_matrix

#: PSF σ step (px) that moves the σ channel by 1.
PSF_UNIT = 0.1


class FastUnmixer(UnmixingModel):
    """See the module docstring. ``scale`` (grey levels) normalises inputs and outputs."""

    def __init__(self, channels: int = 64, blocks: int = 6, hr_channels: int = 16,
                 scale: float = 100.0, grid_head: bool = False, grid_branch: int = 0,
                 grid_flips: bool = False, psf_input: bool = False) -> None:
        super().__init__(phi_matrix())
        self.scale = scale
        self.psf_input = psf_input
        self.head = nn.Conv2d(WINDOW + int(psf_input), channels, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlockNoBN(channels) for _ in range(blocks)))
        self.up = nn.Conv2d(channels, hr_channels * RATIO * RATIO, 3, padding=1)
        self.shuffle = nn.PixelShuffle(RATIO)
        self.out = nn.Conv2d(hr_channels, 1, 3, padding=1)
        if not 0 <= grid_branch <= blocks:
            raise ValueError(f"grid_branch must be in 0 … blocks ({blocks}), got {grid_branch}")
        branch = nn.Sequential(
            *(ResidualBlockNoBN(channels) for _ in range(grid_branch)),
            nn.Conv2d(channels, hr_channels * RATIO * RATIO, 3, padding=1),
            nn.PixelShuffle(RATIO), nn.ReLU()) if grid_head and grid_branch else None
        self.grid_head = GridHead(hr_channels, scale=scale, branch=branch) if grid_head else None
        self.grid_branch = grid_branch
        self.grid_flips = grid_flips
        self.config = {"channels": channels, "blocks": blocks, "hr_channels": hr_channels,
                       "scale": scale, "grid_head": grid_head, "grid_branch": grid_branch,
                       "grid_flips": grid_flips, "psf_input": psf_input}

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        self.check_input(windows, frame_index)
        if self.output != "grid":
            return self._trunk(windows)[0], {}
        if self.grid_flips and not torch.is_grad_enabled():
            return flip_average(self._grid_maps, windows), {}
        return self._grid_maps(windows), {}

    def _trunk(self, windows: torch.Tensor):
        """Splat maps (B, 33, 33), HR features (B, C_hr, 33, 33) and the LR features
        (B, C, 11, 11) that enter the grid branch (before its last ``grid_branch`` blocks)."""
        x = F.relu(self.head(self._inputs(windows)))
        split = len(self.blocks) - self.grid_branch
        lr = self.blocks[:split](x)
        x = F.relu(self.shuffle(self.up(self.blocks[split:](lr))))
        return self.out(x).view(-1, HR, HR) * self.scale, x, lr

    def _inputs(self, windows: torch.Tensor) -> torch.Tensor:
        """The head's input: the scaled frames (B, 5, 11, 11), plus with ``psf_input`` the
        σ channel (B, 1, 11, 11) = (σ − 0.5) / PSF_UNIT."""
        x = windows / self.scale
        if not self.psf_input:
            return x
        sigma = torch.as_tensor(self.psf_sigma, dtype=x.dtype, device=x.device)
        level = ((sigma - SIGMA) / PSF_UNIT).reshape(-1, 1, 1, 1).expand(len(x), 1, *x.shape[2:])
        return torch.cat([x, level], dim=1)

    def adapt_state(self, state: dict) -> dict:
        """Weights of a model without the σ channel get zero weights for it."""
        weight = state.get("head.weight")
        if self.psf_input and weight is not None and weight.shape[1] == WINDOW:
            state = dict(state)
            state["head.weight"] = torch.cat([weight, weight.new_zeros(
                weight.shape[0], 1, *weight.shape[2:])], dim=1)
        return state

    def init_missing(self, missing: list[str]) -> None:
        """A grid branch missing from the start weights begins as a copy of the trunk's last
        ``grid_branch`` blocks and upsampling conv, so the head's inputs start unchanged."""
        if self.grid_branch:
            init_branch(self.grid_head, missing, [*self.blocks[-self.grid_branch:], self.up])

    def _grid_maps(self, windows: torch.Tensor) -> torch.Tensor:
        maps, hr, lr = self._trunk(windows)
        return self.grid_head(lr if self.grid_branch else hr, maps, windows, self.phi)

