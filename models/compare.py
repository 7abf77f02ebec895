"""``python -m models compare``: the paper's Fig. 6 for any registered models.

For a few frames of one trajectory, one row per frame: the input (the middle LR frame, Φx plus
quantisation), each model's HR map with the points the extractor finds in it (+), and the
ground truth (the GT map with the true positions, ○). Models without weights are left out with
a message.

Usage::

    python -m models compare --models ista,istanet,derefnet --data DIR --trajectory 3 \\
        --out fig.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from models.extract import extract_points
from models.protocol import HALF
from models.weights import WeightsError, load_model
from sim import load_dataset
from sim.geometry import RATIO
from sim.render import gt_map


def trajectory_maps(model, frames: np.ndarray) -> np.ndarray:
    """Maps (L − 4, 33, 33) of frames 2 … L − 3 of one trajectory ``frames`` (L, 11, 11)."""
    with torch.inference_mode():
        maps, _ = model.eval().forward_sequences(
            torch.from_numpy(frames.astype(np.float32))[None], torch.zeros(1, dtype=torch.int64))
    return maps[0].numpy()


def draw(path: str, frames: np.ndarray, targets: np.ndarray, maps: dict[str, np.ndarray],
         shown: list[int], zoom_px: float | None = 2.5) -> None:
    """Write the figure: rows = frames ``shown``, columns = input, each model, ground truth.

    ``zoom_px``: each panel shows ± this many LR pixels around the targets' centre (None: the
    whole patch).
    """
    from matplotlib.figure import Figure

    columns = ["input", *maps, "ground truth"]
    fig = Figure(figsize=(2.2 * len(columns), 2.2 * len(shown)), dpi=110)
    axes = fig.subplots(len(shown), len(columns), squeeze=False)

    def hr(points):  # LR pixel positions -> HR cell coordinates for plotting
        return points * RATIO + (RATIO - 1) // 2

    for r, t in enumerate(shown):
        truth = targets[t][np.all(np.isfinite(targets[t]), axis=1)]
        window = frames[t - HALF:t + HALF + 1][None].astype(np.float32)
        panels = [("input", frames[t], None)]
        for name, m in maps.items():
            found = extract_points(m[t - HALF][None], window)[0]
            panels.append((name, m[t - HALF], hr(found[:, :2])))
        panels.append(("ground truth", gt_map(truth[None])[0], hr(truth[:, :2])))
        size = frames.shape[-1]
        centre = truth[:, :2].mean(axis=0)
        if zoom_px is not None:  # keep the zoomed view inside the patch
            centre = np.clip(centre, zoom_px - 0.5, size - 0.5 - zoom_px)
        for c, (title, image, points) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", interpolation="nearest")
            if zoom_px is not None:
                lo, hi = centre - zoom_px, centre + zoom_px
                if c:  # HR maps: LR pixel positions in HR cell units
                    lo, hi = hr(lo), hr(hi)
                ax.set_xlim(lo[1], hi[1])
                ax.set_ylim(hi[0], lo[0])
            if points is not None and len(points):
                marker = "o" if title == "ground truth" else "+"
                ax.scatter(points[:, 1], points[:, 0], marker=marker, s=40,
                           facecolors="none" if marker == "o" else "tab:red",
                           edgecolors="tab:green" if marker == "o" else None, linewidths=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"frame {t}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, help="comma-separated registered model names")
    p.add_argument("--data", required=True, help="dataset root, split folder or .npz")
    p.add_argument("--split", default="test")
    p.add_argument("--trajectory", type=int, default=0, help="trajectory index in the split")
    p.add_argument("--frames", default="2,7,12,17", help="frames to show (2 … T−3)")
    p.add_argument("--out", default="compare.png", help="PNG to write")
    p.add_argument("--whole", action="store_true",
                   help="show the whole patch instead of ±2.5 px around the targets")


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data, args.split)
    if not 0 <= args.trajectory < dataset.n_trajectories:
        raise SystemExit(f"--trajectory must be in 0 … {dataset.n_trajectories - 1}")
    frames = dataset.trajectory_images()[args.trajectory]
    targets = dataset.trajectory_targets()[args.trajectory]
    shown = [int(f) for f in args.frames.split(",")]
    if not all(HALF <= t < len(frames) - HALF for t in shown):
        raise SystemExit(f"--frames must lie in {HALF} … {len(frames) - HALF - 1}")
    maps = {}
    for name in args.models.split(","):
        try:
            model, _ = load_model(name)
        except WeightsError as exc:
            print(f"{name}: left out ({exc})", file=sys.stderr)
            continue
        maps[name] = trajectory_maps(model, frames)
    draw(args.out, frames, targets, maps, shown, None if args.whole else 2.5)
    print(f"wrote {args.out}")
    return 0
