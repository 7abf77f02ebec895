"""TDAN, temporally deformable alignment network, in the LR domain (docs/reference.md §5.5).

Per frame (11×11, raw grey levels): features F = conv3×3 1→C + ReLU → ``blocks_before``
residual blocks. Per window and neighbour m of the middle frame j:
agg = DCN(DCN(conv3×3 2C→C [F_j, F_m])) (offsets of each DCN from its own input), then
aligned = DCN'(F_m, offsets from agg) → DCN (own offsets) → conv3×3 C→1: the neighbour's
LR frame aligned on frame j. All DCNs are deformable 3×3 convs with ``deform_groups`` offset
groups and zero-initialised offsets (:class:`models.layers.deform.DeformConv2dPack`).
The 5 slots [aligned j−2, aligned j−1, centre, aligned j+1, aligned j+2] → conv3×3 5→C +
ReLU → ``blocks_after`` residual blocks → conv3×3 C→9C, PixelShuffle(3) → conv3×3 C→1 (no
bias) → the HR map. C = 32, 5 + 10 blocks, 8 groups: 584 833 learned parameters, the
reference's layers exactly; Table VII's 0.59 M is presumably 0.585 M rounded once more. One
20-frame trajectory through :meth:`TDAN.forward_sequences` costs 2.179 G MACs without the
deformable convolutions' own products, the README's figure (docs/reference.md §6.3).

Auxiliary loss ``align`` (training only): mean squared difference between the 5 slots and
the window's middle LR frame, averaged over windows (the reference sums it over the 16
windows of a trajectory, with weight 0.01, as it sums the regression loss).

Reference bug (§8 #10): the centre slot is always frame t // 2 of the batch (frame 10 of a
20-frame trajectory) whatever the window. ``faithful=True`` reproduces it: every window of a
sequence gets the sequence's frame L // 2 (a lone window is a sequence of 5, so its own
middle frame); the default uses each window's middle frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import UnmixingModel
from models.layers.deform import DeformConv2dPack
from models.layers.residual import ResidualBlockNoBN
from models.sr.blocks import kaiming_init_
from sim.geometry import HR, PATCH, RATIO, WINDOW
from sim.phi import phi_matrix

HALF = WINDOW // 2


def _conv_relu(c_in: int, c_out: int) -> nn.Sequential:
    """mmcv's ConvModule: conv3×3 with bias (Kaiming fan-out init) + ReLU."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU())


class TDAN(UnmixingModel):
    """See the module docstring."""

    def __init__(self, channels: int = 32, blocks_before: int = 5, blocks_after: int = 10,
                 deform_groups: int = 8, faithful: bool = False) -> None:
        super().__init__(phi_matrix())
        c = channels
        self.faithful = faithful
        self.extract = nn.Sequential(_conv_relu(1, c),
                                     *(ResidualBlockNoBN(c) for _ in range(blocks_before)))
        self.aggregate = nn.Conv2d(2 * c, c, 3, padding=1)
        self.agg_dcn1 = DeformConv2dPack(c, deform_groups=deform_groups)
        self.agg_dcn2 = DeformConv2dPack(c, deform_groups=deform_groups)
        self.align1 = DeformConv2dPack(c, deform_groups=deform_groups)
        self.align2 = DeformConv2dPack(c, deform_groups=deform_groups)
        self.to_lr = nn.Conv2d(c, 1, 3, padding=1)
        self.reconstruct = nn.Sequential(
            _conv_relu(WINDOW, c), *(ResidualBlockNoBN(c) for _ in range(blocks_after)),
            kaiming_init_(nn.Conv2d(c, RATIO * RATIO * c, 3, padding=1)), nn.PixelShuffle(RATIO),
            nn.Conv2d(c, 1, 3, padding=1, bias=False),
        )
        self.config = {"channels": channels, "blocks_before": blocks_before,
                       "blocks_after": blocks_after, "deform_groups": deform_groups,
                       "faithful": faithful}

    def align(self, f_centre: torch.Tensor, f_neighbour: torch.Tensor) -> torch.Tensor:
        """Features (N, C, 11, 11) of centre and neighbour -> aligned neighbour (N, 1, 11, 11)."""
        agg = self.aggregate(torch.cat([f_centre, f_neighbour], dim=1))
        agg = self.agg_dcn1(agg, agg)
        agg = self.agg_dcn2(agg, agg)
        aligned = self.align1(f_neighbour, agg)
        return self.to_lr(self.align2(aligned, aligned))

    def slots(self, frames: torch.Tensor) -> torch.Tensor:
        """The 5 aligned LR slots of every window of frame sequences.

        frames: (N, L, 11, 11) grey levels, L ≥ 5. Returns (N, L − 4, 5, 11, 11): for window w
        (middle frame w + 2) its 4 aligned neighbours around the centre slot.
        """
        n, length = frames.shape[:2]
        n_win = length - WINDOW + 1
        feats = self.extract(frames.reshape(n * length, 1, PATCH, PATCH))
        feats = feats.view(n, length, -1, PATCH, PATCH)
        dev = frames.device
        middle = torch.arange(n_win, device=dev) + HALF  # (n_win,)
        steps = torch.tensor([i - HALF for i in range(WINDOW) if i != HALF], device=dev)
        neighbour = middle[:, None] + steps[None]  # (n_win, 4)
        f_c = feats[:, middle, None].expand(-1, -1, WINDOW - 1, -1, -1, -1)
        f_m = feats[:, neighbour]  # (N, n_win, 4, C, 11, 11)
        c = feats.shape[2]
        aligned = self.align(f_c.reshape(-1, c, PATCH, PATCH), f_m.reshape(-1, c, PATCH, PATCH))
        aligned = aligned.view(n, n_win, WINDOW - 1, PATCH, PATCH)
        if self.faithful:
            centre = frames[:, length // 2, None].expand(-1, n_win, -1, -1)
        else:
            centre = frames[:, middle]
        return torch.cat([aligned[:, :, :HALF], centre[:, :, None], aligned[:, :, HALF:]], dim=2)

    def forward_sequences(self, frames: torch.Tensor, start_index: torch.Tensor):
        """Maps (N, L − 4, 33, 33) of every window of frame sequences (N, L, 11, 11), the
        per-frame features computed once per frame; aux ``align`` in training mode."""
        n, length = frames.shape[:2]
        n_win = length - WINDOW + 1
        stack = self.slots(frames)  # (N, n_win, 5, 11, 11)
        maps = self.reconstruct(stack.reshape(n * n_win, WINDOW, PATCH, PATCH))
        aux = {}
        if self.training:
            lr_middle = frames[:, HALF:HALF + n_win, None]
            aux = {"align": F.mse_loss(stack, lr_middle.expand_as(stack))}
        return maps.view(n, n_win, HR, HR), aux

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        self.check_input(windows, frame_index)
        maps, aux = self.forward_sequences(windows, frame_index - HALF)
        return maps.view(-1, HR, HR), aux
