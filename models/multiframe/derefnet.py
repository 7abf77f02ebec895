"""DeRefNet (Zhai et al., "SeqCSIST", IEEE TGRS 2025), built as the reference code builds it.

Layer by layer (docs/reference.md §4):

1. Unfolding feature extractor, 9 untied ISTA-Net layers per frame, from x₀ = Qinit·y:

   .. math::
       r_k = x_{k-1} - ρ_k Φ^TΦ x_{k-1} + ρ_k Φ^T y,\\quad
       x_k = \\tilde G_k(\\mathrm{soft}(G_k(r_k), θ_k)),\\quad
       s_k = \\tilde G_k(G_k(r_k)) - r_k

2. Time encoder: T = sigmoid(Linear₁₀₈₉→₁₀₈₉(τ/20 · 1)), H' = x₉ ⊙ T, τ = frame index.
3. Temporal deformable alignment per neighbour m of the middle frame j: FE (conv+ReLU) of
   H'_j and H'_m, selective attention, two stacked deformable convs, conv 32→1 → H''_m;
   the middle slot is the raw H'_j.
4. Tail: conv 5→32 + ReLU, 5 residual blocks (no BN), conv 32→1 → the HR map.

Not in the paper: with ``grid_head`` a :class:`~models.layers.grid_head.GridHead` reads the
tail's features before its last conv (or, with ``grid_branch`` = n ≥ 1, its own copy of the
last n residual blocks applied to the features before them) and the map, and
``set_output("grid")`` makes the model return its maps, trained on the snapped truth for the
reference's grid rule (docs/reference.md §9.1); the points extractor always reads the map.

Losses: L_cons = Σ_k mean(s_k²); L_align = |H''_m − x₉_j| over the 4 neighbours (sum per window
as the reference, or mean); L_reg (MSE to the target map) is added by the training loop.
Known reference quirks we keep: the dense 1089² time-encoder Linear (1.19 M params), two
DCNs, the symmetry residual on r_k. We drop the ×2 of MMEngine's ``parse_losses``.

Computed more cheaply, same values: ΦᵀΦx as Φᵀ(Φx), and the time encoder's Linear on its
constant input τ/20·1 as τ/20 · (row sums of W) + b (its parameters and gradients are the
reference's). With the compiled deformable-conv kernel (:mod:`models.layers.deform`) these
make the live CPU path (``benchmarks/bench_derefnet.json``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import UnmixingModel
from models.layers.deform import DeformConv2dPack
from models.layers.grid_head import GridHead, init_branch
from models.layers.narrow import NarrowConv2d
from models.layers.residual import ResidualBlockNoBN
from models.layers.unfolding import UnfoldingLayer, unfold
from sim.geometry import HR, WINDOW
from sim.phi import phi_matrix


class SelectiveAttention(nn.Module):
    """SK(32): 1×1 reductions of centre and neighbour, spatial gates from mean/max maps.

    f_centre (B, C, H, W); f_neighbour (R·B, C, H, W), neighbour-major (row r·B + i is
    neighbour r of window i). The centre's reduction is computed once and repeated R times.
    """

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        half = channels // 2
        self.reduce_centre = nn.Conv2d(channels, half, 1)
        self.reduce_neighbour = nn.Conv2d(channels, half, 1)
        self.gate = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, f_centre, f_neighbour):
        b = self.reduce_neighbour(f_neighbour)
        # R copies by cat, not repeat: cat keeps channels-last memory, which the offset
        # convs that read the output want (repeat returns NCHW, costing a reorder there)
        a = torch.cat([self.reduce_centre(f_centre)] * (b.shape[0] // f_centre.shape[0]))
        u = torch.cat([a, b], dim=1)
        stats = torch.cat([u.mean(dim=1, keepdim=True), u.amax(dim=1, keepdim=True)], dim=1)
        w = torch.sigmoid(self.gate(stats))
        return torch.cat([a * w[:, :1], b * w[:, 1:]], dim=1)


class DeRefNet(UnmixingModel):
    """DeRefNet unmixer; see the module docstring. Input/output per :mod:`models.base`."""

    shares_frame_features = True

    def __init__(
        self,
        layers: int = 9,
        channels: int = 32,
        res_blocks: int = 5,
        trajectory_length: int = 20,
        align_reduction: str = "sum",
        sigma: float = 0.5,
        grid_head: bool = False,
        grid_branch: int = 0,
    ) -> None:
        super().__init__(phi_matrix(sigma=sigma))
        if align_reduction not in ("sum", "mean"):
            raise ValueError(f"align_reduction must be 'sum' or 'mean', got {align_reduction!r}")
        self.align_reduction = align_reduction
        self.trajectory_length = trajectory_length
        self.unfolding = nn.ModuleList(UnfoldingLayer(channels) for _ in range(layers))
        self.time = nn.Linear(HR * HR, HR * HR)
        self.fe = nn.Conv2d(1, channels, 3, padding=1)
        nn.init.kaiming_normal_(self.fe.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fe.bias)
        self.attention = SelectiveAttention(channels)
        self.dcn1 = DeformConv2dPack(channels)
        self.dcn2 = DeformConv2dPack(channels)
        self.align_out = NarrowConv2d(channels, 1)
        self.head = nn.Conv2d(WINDOW, channels, 3, padding=1)
        nn.init.kaiming_normal_(self.head.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.bias)
        self.blocks = nn.Sequential(*(ResidualBlockNoBN(channels) for _ in range(res_blocks)))
        self.tail = NarrowConv2d(channels, 1, bias=False)
        if not 0 <= grid_branch <= res_blocks:
            raise ValueError(
                f"grid_branch must be in 0 … res_blocks ({res_blocks}), got {grid_branch}")
        branch = nn.Sequential(*(ResidualBlockNoBN(channels) for _ in range(grid_branch))
                               ) if grid_head and grid_branch else None
        self.grid_head = GridHead(channels, branch=branch) if grid_head else None
        self.grid_branch = grid_branch
        self.config = {
            "layers": layers, "channels": channels, "res_blocks": res_blocks,
            "trajectory_length": trajectory_length, "align_reduction": align_reduction,
            "sigma": sigma, "grid_head": grid_head, "grid_branch": grid_branch,
        }

    def init_missing(self, missing: list[str]) -> None:
        """A grid branch missing from the start weights begins as a copy of the tail's last
        ``grid_branch`` residual blocks, so the head's inputs start unchanged."""
        if self.grid_branch:
            init_branch(self.grid_head, missing, list(self.blocks[-self.grid_branch:]))

    # -- per-frame features -------------------------------------------------------------
    def frame_features(self, frames: torch.Tensor):
        """Unfolding of single frames: its output depends on the frame alone, so the windows
        that share a frame share it (:meth:`forward_sequences`, the live unmixer's cache).

        frames: (N, 11, 11) grey levels. Returns x9 (N, 1089) and the summed symmetry loss
        (scalar, or None outside training).
        """
        y = frames.reshape(frames.shape[0], -1)
        phity = y @ self.phi  # (N, 1089) = (Φᵀ y)ᵀ
        return unfold(self.unfolding, y @ self.qinit.T, self.phi, phity, self.training)

    def window_maps(self, features: torch.Tensor, frame_index: torch.Tensor,
                    windows: torch.Tensor | None = None):
        """Time encoding, alignment and reconstruction of windows from per-frame features.

        features: (B, 5, 1089) x9 of frames t − 2 … t + 2; frame_index: (B,) index t of each
        middle frame; windows: the frames themselves (B, 5, 11, 11), which the grid output
        reads. Returns maps (B, 33, 33) and the alignment loss (scalar).
        """
        offsets = torch.arange(-(WINDOW // 2), WINDOW // 2 + 1, device=features.device)
        tau = (frame_index[:, None] + offsets[None]).to(features.dtype)  # (B, 5)
        # the encoder's input is the constant vector τ/L·1, so Linear(τ/L·1) = τ/L·W1 + b:
        # the same values as the dense product, 1,089× fewer MACs
        rows = self.time.weight.sum(dim=1)  # (1089,)
        h_time = features * torch.sigmoid(
            (tau / self.trajectory_length)[..., None] * rows + self.time.bias)
        return self.fuse(h_time, features[:, WINDOW // 2], windows)

    # -- fusion of a window -------------------------------------------------------------
    def fuse(self, h_time: torch.Tensor, x_centre: torch.Tensor,
             windows: torch.Tensor | None = None):
        """Align the 4 neighbours on the middle frame and reconstruct.

        h_time: (B, 5, 1089) time-encoded features in temporal order; x_centre: (B, 1089)
        middle-frame unfolding output (reference of the alignment loss); windows: as
        :meth:`window_maps`. Returns maps (B, 33, 33) (the grid head's with the ``grid``
        output) and the alignment loss (scalar).
        """
        b = h_time.shape[0]
        maps = h_time.view(b, WINDOW, 1, HR, HR)
        centre = maps[:, WINDOW // 2]
        neighbours = torch.cat([maps[:, i] for i in range(WINDOW) if i != WINDOW // 2], dim=0)
        f_c = F.relu(self.fe(centre), inplace=True)
        f_m = F.relu(self.fe(neighbours), inplace=True)
        agg = self.attention(f_c, f_m)
        a1 = self.dcn1(f_m, agg)
        a2 = self.dcn2(a1, a1)
        aligned = self.align_out(a2).view(WINDOW - 1, b, HR, HR).transpose(0, 1)  # (B,4,33,33)
        diff = (aligned - x_centre.view(b, 1, HR, HR)).abs()
        l_align = diff.sum() if self.align_reduction == "sum" else diff.mean()
        half = WINDOW // 2
        stack = torch.cat([aligned[:, :half], centre, aligned[:, half:]], dim=1)  # (B,5,33,33)
        split = len(self.blocks) - self.grid_branch
        shared = self.blocks[:split](F.relu(self.head(stack), inplace=True))
        features = self.blocks[split:](shared)
        maps = self.tail(features).view(b, HR, HR)
        if self.output == "grid":
            if windows is None:
                raise ValueError("DeRefNet's grid output reads the window's frames: pass windows")
            maps = self.grid_head(shared if self.grid_branch else features, maps, windows,
                                  self.phi)
        return maps, l_align

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        self.check_input(windows, frame_index)
        b = windows.shape[0]
        x, l_cons = self.frame_features(windows.reshape(b * WINDOW, *windows.shape[2:]))
        maps, l_align = self.window_maps(x.view(b, WINDOW, -1), frame_index, windows)
        aux = {"cons": l_cons, "align": l_align} if self.training else {}
        return maps, aux

    def forward_sequences(self, frames: torch.Tensor, start_index: torch.Tensor):
        """Predict every middle frame of frame sequences, sharing per-frame features.

        frames: (N, L, 11, 11) consecutive frames; start_index: (N,) trajectory index of each
        sequence's first frame. Returns maps (N, L − 4, 33, 33) for frames 2 … L − 3 and the
        auxiliary losses (as :meth:`forward`, summed over windows).
        """
        n, length = frames.shape[:2]
        x, l_cons = self.frame_features(frames.reshape(n * length, *frames.shape[2:]))
        n_win = length - WINDOW + 1
        dev = frames.device
        idx = torch.arange(n_win, device=dev)[:, None] + torch.arange(WINDOW, device=dev)[None]
        features = x.view(n, length, -1)[:, idx].reshape(n * n_win, WINDOW, -1)
        windows = (frames[:, idx].reshape(n * n_win, WINDOW, *frames.shape[2:])
                   if self.output == "grid" else None)  # only the grid head reads them
        middle = (start_index[:, None] + torch.arange(n_win, device=dev)[None] + WINDOW // 2)
        maps, l_align = self.window_maps(features, middle.reshape(-1), windows)
        aux = {"cons": l_cons, "align": l_align} if self.training else {}
        return maps.view(n, n_win, HR, HR), aux
