"""Target layouts learned from a training split: the extractor's prior on how a group is laid out.

``python -m models layouts --data DIR [--out FILE]`` reads the ground truth of DIR's train
split, takes every third evaluated frame of each trajectory, and clusters the targets'
offsets from their group's mean position: two groups of K targets share a layout when their
offsets can be paired within ``--tolerance`` px (optimal pairing). A layout seen in at least
``--min-share`` of the frames is kept, as the mean offsets of its members, with how often it
was seen. The shipped file (``models/weights/layouts.json``) was learned from the train split
of the 2–8-target set: 24 layouts, K = 2…8, the axis and diagonal patterns at 0.3 px that
SeqCSIST's trajectory rules make (docs/reference.md §9.5).

The extractor's physics fit (:mod:`models.extract`) then fits each layout of the window's
count, its shape held by a prior of std ``layout_px`` on the offsets from the group's mean,
and keeps the one that explains the frames best. The layouts are a learned prior: data whose
groups are laid out otherwise needs its own file, learned from its own training split, or
``layouts: none`` (the fit without it).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.config import ConfigError
from sim import load_dataset
from sim.geometry import WINDOW

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "weights" / "layouts.json"
FORMAT = "csist-layouts/1"


def learn_layouts(dataset, tolerance: float = 0.05, min_share: float = 0.002,
                  frame_step: int = 3) -> list[dict]:
    """Layouts of ``dataset``'s groups: a list of {"count": K, "offsets": [[row, col]] × K
    (LR px from the group's mean), "frames": frames seen}, most frequent first per K."""
    clusters: dict[int, list[list]] = {}  # K -> [[sum of offsets (K, 2), frames], ...]
    total = 0
    half = WINDOW // 2
    for traj in range(dataset.n_trajectories):
        for f in range(half, dataset.traj_len - half, frame_step):
            pos = dataset.frame_targets(traj * dataset.traj_len + f)[:, :2]
            offsets = pos - pos.mean(axis=0)
            total += 1
            for cluster in clusters.setdefault(len(pos), []):
                mean = cluster[0] / cluster[1]
                dist = np.linalg.norm(mean[:, None] - offsets[None], axis=-1)
                rows, cols = linear_sum_assignment(dist)
                if dist[rows, cols].max() < tolerance:
                    cluster[0] += offsets[cols]
                    cluster[1] += 1
                    break
            else:
                clusters[len(pos)].append([offsets.copy(), 1])
    return [{"count": k, "offsets": np.round(s / n, 5).tolist(), "frames": n}
            for k in sorted(clusters)
            for s, n in sorted(clusters[k], key=lambda c: -c[1]) if n >= min_share * total]


@functools.lru_cache(maxsize=8)
def load_layouts(source: str, max_targets: int) -> tuple[np.ndarray, np.ndarray]:
    """Layouts of ``source`` ("shipped", "none" or a file path) as arrays for the compiled fit:
    offsets (L, max_targets, 2) zero-padded and counts (L,) int64. "none" gives L = 0;
    layouts of more than ``max_targets`` targets are left out."""
    if source == "none":
        return np.zeros((0, max_targets, 2)), np.zeros(0, dtype=np.int64)
    path = SHIPPED if source == "shipped" else Path(source)
    try:
        doc = json.loads(path.read_text())
        entries = [e for e in doc["layouts"] if e["count"] <= max_targets]
        offsets = np.zeros((len(entries), max_targets, 2))
        for i, e in enumerate(entries):
            offsets[i, :e["count"]] = np.asarray(e["offsets"], dtype=np.float64).reshape(-1, 2)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"extractor layouts {source!r}: cannot read a layouts file ({exc}); use "
            "'shipped', 'none', or a file written by `python -m models layouts`") from exc
    return offsets, np.array([e["count"] for e in entries], dtype=np.int64)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root whose train split is read")
    p.add_argument("--out", default=str(SHIPPED), help=f"JSON output (default {SHIPPED})")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="px within which two groups' paired offsets share a layout")
    p.add_argument("--min-share", type=float, default=0.002,
                   help="least fraction of the frames a layout must be seen in")


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data, "train")
    layouts = learn_layouts(dataset, args.tolerance, args.min_share)
    recipe = Path(args.data) / "recipe.json"
    doc = {"format": FORMAT,
           "data": args.data, "split": "train", "trajectories": dataset.n_trajectories,
           "recipe": json.loads(recipe.read_text())["arguments"] if recipe.is_file() else None,
           "tolerance_px": args.tolerance, "min_share": args.min_share,
           "command": (f"python -m models layouts --data {args.data} --tolerance "
                       f"{args.tolerance} --min-share {args.min_share}"),
           "layouts": layouts}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    counts = ", ".join(f"K={k}: {sum(e['count'] == k for e in layouts)}"
                       for k in sorted({e["count"] for e in layouts}))
    print(f"{len(layouts)} layouts ({counts}) from {dataset.n_trajectories} trajectories; "
          f"wrote {out}")
    return 0
