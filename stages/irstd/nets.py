"""The networks of the learned detectors: MSHNet and DNANet at CPU-live widths.

Both map a normalised frame (B, 1, H, W) (:func:`stages.irstd.data.normalise`) to logits of
"this pixel belongs to a target" (B, 1, H, W); H and W must be multiples of :attr:`stride`
(:func:`pad_to_stride` pads, :mod:`stages.irstd.infer` crops back). In training mode
(``deep=True``) they also return their side outputs for deep supervision.

Widths against the papers' reference configurations (read in the authors' public code):

==========  ============================================  ===============================
network     paper (channels per level, blocks per level)   ours (shipped)
==========  ============================================  ===============================
MSHNet      16-32-64-128-256, 2 residual blocks/level      8-16-32-64 on the 4×-folded grid,
            (1 at the first), 4 poolings, full resolution  1 block/level, 3 poolings,
            4 side outputs + 3×3 fusion                    3 side outputs + 3×3 fusion
DNANet      16-32-64-128-256 ("three"), ResNet-18 style    8-16-32 on the 4×-folded grid,
            2 blocks/node, 4 poolings, 4 supervised heads  1 block/node, 2 poolings,
            (the last one on the pyramid fusion)           3 heads (the last on the fusion)
==========  ============================================  ===============================

Both first fold each ``s2d``×``s2d`` (default 4) pixel cell into channels
(:class:`torch.nn.PixelUnshuffle`: lossless, a 256² frame becomes 16 channels of 64²) and
unfold their heads' ``s2d``² channels back into full-resolution pixels
(:class:`torch.nn.PixelShuffle`): the papers run their first level at full resolution, which
on one CPU core costs 60–110 ms per 256² frame even at widths 4-8-16-32; folded, 5–15 ms
(the refinement included, measured on the 2-core AVX2 machine). H and W
must therefore be multiples of :attr:`stride` = ``s2d · 2 ** (len(widths) − 1)``.

Both end with a small full-resolution refinement of the final logits (:class:`Refine`, ours:
two 3×3 convs on [logits, input]): without it the folded heads put the mask a pixel off
(validation IoU 0.26–0.31 against 0.8–0.9 with it, same Pd, MSHNet after 3–13 minutes of
training). Side outputs are not refined.

Both keep the papers' building block, a residual block with channel-then-spatial attention
(:class:`ResAttentionBlock`), whose channel-attention bottleneck is ``max(C // 4, 1)`` (the
papers' ``C // 16`` is 0 at our widths). Input is one channel (the papers repeat the grey
image into three).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """Per-channel gate: sigmoid(MLP(avg-pool) + MLP(max-pool)), shape (B, C, 1, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 4, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """Per-pixel gate: sigmoid(conv7×7([channel mean, channel max])), shape (B, 1, H, W)."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(stats))


class ResAttentionBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, channel then spatial attention, + shortcut (1×1 conv-BN
    when the width changes), ReLU. (B, C_in, H, W) → (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.ca = ChannelAttention(c_out)
        self.sa = SpatialAttention()
        self.shortcut = (nn.Identity() if c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                       nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out = out * self.ca(out)
        out = out * self.sa(out)
        return F.relu(out + self.shortcut(x))


def stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
    """``blocks`` :class:`ResAttentionBlock` in a row, the first one changing the width."""
    return nn.Sequential(ResAttentionBlock(c_in, c_out),
                         *[ResAttentionBlock(c_out, c_out) for _ in range(blocks - 1)])


def up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling by an integer factor."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def down(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution (bilinear, as DNANet's top-down links)."""
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)


def pad_to_stride(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) at the bottom/right to multiples of ``stride``; returns the
    padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


class ToPixels(nn.Module):
    """Head on the folded grid: 1×1 conv to ``s2d²`` channels, unfolded into pixels.
    (B, C, h, w) → logits (B, 1, h·s2d, w·s2d)."""

    def __init__(self, channels: int, s2d: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, s2d * s2d, 1)
        self.shuffle = nn.PixelShuffle(s2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class Refine(nn.Module):
    """Full-resolution refinement (ours, not in the papers): the folded heads place a target
    to within a pixel or so, so a residual conv3×3(2→4)-ReLU-conv3×3(4→1) on [logits,
    normalised input] snaps the mask onto the bright pixels. Starts as the identity.
    (B, 1, H, W) logits, (B, 1, H, W) input → (B, 1, H, W) logits."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, 1, 3, padding=1))
        with torch.no_grad():
            self.body[-1].weight.zero_()
            self.body[-1].bias.zero_()

    def forward(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return logits + self.body(torch.cat([logits, x], dim=1))


class MSHNet(nn.Module):
    """MSHNet (Liu et al., CVPR 2024): a U-Net of residual attention blocks with one side
    output per decoder level, fused by a 3×3 conv into the final map; trained with the
    scale-and-location-sensitive loss on every output (:func:`stages.irstd.losses.sls_loss`).

    Parameters
    ----------
    widths : tuple of int
        Channels per level of the folded grid, finest first (the last one is the bottleneck);
        ``len(widths) − 1`` poolings.
    blocks : int
        Residual blocks per encoder/decoder level.
    s2d : int
        Space-to-depth factor of the input (1 = the paper's full-resolution first level).
    refine : bool
        Add :class:`Refine` after the fusion.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64), blocks: int = 1,
                 s2d: int = 4, refine: bool = True) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.s2d = s2d
        self.stride = s2d * 2 ** (len(widths) - 1)
        self.fold = nn.PixelUnshuffle(s2d)
        self.stem = nn.Conv2d(s2d * s2d, widths[0], 1)
        self.encoders = nn.ModuleList(
            [stage(widths[0], widths[0], blocks)]
            + [stage(widths[i - 1], widths[i], blocks) for i in range(1, len(widths))])
        self.decoders = nn.ModuleList(
            [stage(widths[i] + widths[i + 1], widths[i], blocks)
             for i in range(len(widths) - 1)])
        self.heads = nn.ModuleList([ToPixels(widths[i], s2d) for i in range(len(widths) - 1)])
        self.fuse = nn.Conv2d(len(widths) - 1, 1, 3, padding=1)
        with torch.no_grad():  # start as the mean of the side logits (a random start
            self.fuse.weight.zero_()  # saturates the sigmoid and stalls the fused output)
            self.fuse.weight[:, :, 1, 1] = 1.0 / (len(widths) - 1)
            self.fuse.bias.zero_()
        self.refine = Refine() if refine else None

    def forward(self, x: torch.Tensor, deep: bool = False):
        """(B, 1, H, W) → logits (B, 1, H, W); with ``deep``, (logits, [side logits of
        decoder level i at (H / 2^i, W / 2^i), finest first])."""
        feats = [self.encoders[0](self.stem(self.fold(x)))]
        for enc in self.encoders[1:]:
            feats.append(enc(F.max_pool2d(feats[-1], 2)))
        y = feats[-1]
        decoded = [feats[0]] * (len(feats) - 1)
        for i in range(len(feats) - 2, -1, -1):
            y = self.decoders[i](torch.cat([feats[i], up(y, 2)], dim=1))
            decoded[i] = y
        sides = [head(d) for head, d in zip(self.heads, decoded, strict=True)]
        out = self.fuse(torch.cat([sides[0]] + [up(s, 2 ** i) for i, s in
                                                enumerate(sides) if i], dim=1))
        if self.refine is not None:
            out = self.refine(out, x)
        return (out, sides) if deep else out


class DNANet(nn.Module):
    """DNANet (Li et al., IEEE TIP 2023): dense nested interactions (UNet++ grid of nodes
    x[i][j], level i, column j, each fed by the same level's earlier nodes, the upsampled
    node below and the downsampled node above), residual channel-spatial attention blocks,
    feature-pyramid fusion of the last column at the finest level, deep supervision of the
    top row; trained with SoftIoU (:func:`stages.irstd.losses.soft_iou_loss`).

    Parameters
    ----------
    widths : tuple of int
        Channels per level of the folded grid, finest first; ``len(widths) − 1`` poolings.
    blocks : int
        Residual blocks per node below the top level (the top level has 1).
    s2d : int
        Space-to-depth factor of the input.
    refine : bool
        Add :class:`Refine` after the fused head.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32), blocks: int = 1,
                 s2d: int = 4, refine: bool = True) -> None:
        super().__init__()
        self.widths = tuple(widths)
        levels = len(widths)
        self.levels = levels
        self.s2d = s2d
        self.stride = s2d * 2 ** (levels - 1)
        self.fold = nn.PixelUnshuffle(s2d)
        nodes = {}
        for i in range(levels):  # backbone column j = 0
            nodes[f"{i}_0"] = stage(s2d * s2d if i == 0 else widths[i - 1], widths[i],
                                    1 if i == 0 else blocks)
        for j in range(1, levels):
            for i in range(levels - j):
                c_in = widths[i] * j + widths[i + 1] + (widths[i - 1] if i else 0)
                nodes[f"{i}_{j}"] = stage(c_in, widths[i], 1 if i == 0 else blocks)
        self.nodes = nn.ModuleDict(nodes)
        # pyramid fusion: the last node of every level, projected to widths[0], upsampled
        self.project = nn.ModuleList([nn.Conv2d(widths[i], widths[0], 1)
                                      for i in range(1, levels)])
        self.fuse = stage(widths[0] * levels, widths[0], 1)
        self.heads = nn.ModuleList([ToPixels(widths[0], s2d) for _ in range(levels)])
        self.refine = Refine() if refine else None

    def forward(self, x: torch.Tensor, deep: bool = False):
        """(B, 1, H, W) → logits (B, 1, H, W) of the fused head; with ``deep``, (logits,
        [logits (B, 1, H, W) of the top-row nodes x[0][1] … x[0][L−1]])."""
        levels = self.levels
        grid: dict[tuple[int, int], torch.Tensor] = {}
        grid[0, 0] = self.nodes["0_0"](self.fold(x))
        for i in range(1, levels):
            grid[i, 0] = self.nodes[f"{i}_0"](F.max_pool2d(grid[i - 1, 0], 2))
            for j in range(1, i + 1):  # the anti-diagonal ending at level i, bottom first
                r = i - j
                parts = [grid[r, c] for c in range(j)] + [up(grid[r + 1, j - 1], 2)]
                if r:
                    parts.append(down(grid[r - 1, j]))
                grid[r, j] = self.nodes[f"{r}_{j}"](torch.cat(parts, dim=1))
        last = [grid[i, levels - 1 - i] for i in range(levels)]
        pyramid = [up(self.project[i - 1](last[i]), 2 ** i) for i in range(levels - 1, 0, -1)]
        fused = self.fuse(torch.cat(pyramid + [last[0]], dim=1))
        out = self.heads[-1](fused)
        if self.refine is not None:
            out = self.refine(out, x)
        if not deep:
            return out
        sides = [self.heads[j - 1](grid[0, j]) for j in range(1, levels)]
        return out, sides


NETS = {"mshnet": MSHNet, "dnanet": DNANet}


def build(kind: str, widths: tuple[int, ...] | list[int], blocks: int = 1,
          s2d: int = 4, refine: bool = True) -> nn.Module:
    """The network of detector ``kind`` ("mshnet" or "dnanet")."""
    if kind not in NETS:
        raise ValueError(f"unknown learned detector {kind!r}; expected one of {tuple(NETS)}")
    return NETS[kind](tuple(int(w) for w in widths), int(blocks), int(s2d), bool(refine))
