"""A second output head trained for the reference's grid rule (docs/reference.md §9.1).

A network trained on bilinear splats spreads each target over four HR cells; that map feeds
the sub-pixel extractor well but the grid rule (every cell ≥ 70 grey levels is a detection)
counts its spread as false positives. The grid head reads the network's HR features and its
map and is trained on the ground truth snapped to the grid (:func:`models.snap.snap_map`): one
cell per target, scored by how near the target lies to the node.

Which node a target belongs to is decided to a few hundredths of a pixel, finer than the
trunk's map places it, so the head also sees where that map disagrees with the frames: the
data-fidelity gradient Φᵀ(y − Φx) of the map x against the middle frame and against the
mean of the window's frames (the targets move < 0.05 px per frame), as one ISTA step would:

features (B, C, 33, 33), maps (B, 33, 33), windows (B, 5, 11, 11) →
[features, x / scale, Φᵀ(y_mid − Φx) / scale, Φᵀ(ȳ − Φx) / scale] →
conv3×3 (C+3 → G) → ReLU → conv3×3 G → G → ReLU → conv3×3 G → 1 → × scale → (B, 33, 33).

With a ``branch`` the head does not read the trunk's last features but computes its own: the
model hands it a copy of the trunk's last layers (FastUnmixer: its last n residual blocks and ×3
upsampling; DeRefNet: its last n residual blocks), which the head applies to the trunk's
features before those layers. The branch trains for the grid (:func:`init_branch` starts it as
a copy of the trunk), while the splat map the extractor reads stays the trunk's.

:func:`flip_average` averages a grid output over the window and its three flips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sim.geometry import HR, WINDOW


class GridHead(nn.Module):
    """See the module docstring; ``scale`` (grey levels) normalises maps and gradients."""

    def __init__(self, in_channels: int, channels: int = 32, scale: float = 100.0,
                 branch: nn.Sequential | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.branch = branch
        self.conv1 = nn.Conv2d(in_channels + 3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, features: torch.Tensor, maps: torch.Tensor, windows: torch.Tensor,
                phi: torch.Tensor) -> torch.Tensor:
        """Grid maps (B, 33, 33) in grey levels.

        features: the trunk's last features (B, C, 33, 33), or with a branch the trunk's
        features before the layers the branch repeats; maps (B, 33, 33) grey levels;
        windows (B, 5, 11, 11) grey levels (background level subtracted, as the model sees
        them); phi (121, 1089).
        """
        b = maps.shape[0]
        if self.branch is not None:
            features = self.branch(features)
        x = maps.reshape(b, HR * HR)
        frames = windows.reshape(b, WINDOW, -1)
        rendered = x @ phi.T
        fidelity = torch.stack([(frames[:, WINDOW // 2] - rendered) @ phi,
                                (frames.mean(dim=1) - rendered) @ phi], dim=1)
        inputs = torch.cat([features, torch.cat([x[:, None], fidelity], dim=1)
                            .view(b, 3, HR, HR) / self.scale], dim=1)
        h = F.relu(self.conv1(inputs))
        h = F.relu(self.conv2(h))
        return self.out(h).view(b, HR, HR) * self.scale


def init_branch(head: GridHead, missing: list[str], sources: list[nn.Module]) -> None:
    """Start ``head``'s branch as a copy of ``sources`` (the trunk layers it repeats, in order)
    if a training run's start weights lacked it (``missing``: their ``state_dict`` names)."""
    if not any(name.startswith("grid_head.branch.") for name in missing):
        return
    copies = [m for m in head.branch if m.state_dict()]
    for source, copy in zip(sources, copies, strict=True):
        copy.load_state_dict(source.state_dict())


def flip_average(grid_maps, windows: torch.Tensor) -> torch.Tensor:
    """Mean of ``grid_maps(w)`` (a callable (B, 5, 11, 11) → (B, 33, 33)) over the windows and
    their flips along rows, columns and both, each map flipped back. Exact symmetry of the
    geometry: flipping the 11 LR pixels maps HR node i onto node 32 − i."""
    flips = ((), (-1,), (-2,), (-2, -1))
    return sum(grid_maps(windows.flip(dims)).flip(dims) for dims in flips) / len(flips)
