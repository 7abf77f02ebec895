"""Score a model with CSO-mAP on a dataset split, the SeqCSIST way.

Protocol (facts §1.5, §3): single process, trajectory-aligned. For every trajectory of T
frames the middle frames t = 2 … T−3 are evaluated (2 … 17 for T = 20, i.e. 16 windows per
trajectory, 12 000 frames on a 750-trajectory test split); window t holds frames t−2 … t+2 of
the same trajectory and its output map is scored against the GT of frame t.

Output maps become detections either on the HR grid (``grid``: every cell ≥ 70 is a detection,
the reference rule) or as sub-pixel points (``points``: ``models.extract.extract_points``).

Cost conventions: ``params`` counts learned parameters (not buffers such as Φ). ``macs`` are
multiply-accumulates of one forward over **one window**, counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmul/linear/conv/attention ops; FLOPs = 2 × MACs;
element-wise ops and torchvision's deformable convolution count 0, like fvcore and the
paper's count of mmcv DCN ops). ``macs_per_trajectory`` = 16 × ``macs``; Table VII instead
counts one forward over a 20-frame batch, which is lower for models that share per-frame work
between windows. ``windows_per_s`` = scored windows / time spent in the model's forward.

Usage::

    python -m models evaluate --model ista --data /tmp/eval --split test --out ista.json
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from models.base import Unmixer
from models.evaluation import (
    THRESHOLDS,
    Matching,
    ap_key,
    grid_detections,
    match_detections,
    precision_recall,
    summarize,
)
from models.extract import ExtractorConfig, extract_points
from models.weights import default_weights, load_model, sha256_file
from sim import load_dataset
from sim.dataset import SeqDataset
from sim.geometry import HR, WINDOW
from sim.render import gt_map

MODES = ("grid", "points")
#: Middle frame offset inside a window: window t spans frames t−2 … t+2.
HALF = WINDOW // 2


@dataclass(frozen=True)
class Predictions:
    """Model outputs for the evaluated frames of a dataset, in dataset order.

    Attributes
    ----------
    maps : ndarray of shape (N, 33, 33), float32
        Output maps (grey levels).
    windows : ndarray of shape (N, 5, 11, 11), float32
        Input windows (raw grey levels).
    frames : ndarray of shape (N,), int64
        Dataset index of the middle frame of each window (the frame scored).
    forward_s : float
        Seconds spent in the model's forward calls.
    """

    maps: np.ndarray
    windows: np.ndarray
    frames: np.ndarray
    forward_s: float


def eval_frames(dataset: SeqDataset) -> tuple[np.ndarray, np.ndarray]:
    """Evaluated frames: dataset indices (N,) and in-trajectory indices t (N,), both int64."""
    t_len = dataset.traj_len
    if t_len < WINDOW:
        raise ValueError(
            f"trajectories of {t_len} frames are shorter than the {WINDOW}-frame window"
        )
    middles = np.arange(HALF, t_len - HALF, dtype=np.int64)
    starts = np.arange(dataset.n_trajectories, dtype=np.int64) * t_len
    frames = (starts[:, None] + middles[None, :]).ravel()
    return frames, np.tile(middles, dataset.n_trajectories)


def eval_windows(dataset: SeqDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of the evaluated frames.

    Returns
    -------
    windows : ndarray of shape (N, 5, 11, 11), float32
        Frames t−2 … t+2 of the trajectory, raw grey levels.
    frame_index : ndarray of shape (N,), int64
        Index t of the middle frame within its trajectory.
    frames : ndarray of shape (N,), int64
        Dataset index of the middle frame.
    """
    frames, frame_index = eval_frames(dataset)
    offsets = np.arange(-HALF, HALF + 1)
    windows = dataset.images[frames[:, None] + offsets[None, :]].astype(np.float32)
    return windows, frame_index, frames


def ground_truths(dataset: SeqDataset, frames: np.ndarray) -> list[np.ndarray]:
    """Targets (m_i, 3) = (row, col, brightness) of the given dataset frames."""
    return [dataset.frame_targets(int(f)) for f in frames]


def _model_device(model: torch.nn.Module) -> torch.device:
    tensors = [*model.parameters(), *model.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


@contextmanager
def _inference(model: torch.nn.Module):
    """Eval mode and ``torch.inference_mode`` for the block; the train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _batches(model: Unmixer, dataset: SeqDataset, windows, frame_index, batch_size: int,
             device: torch.device):
    """(slice of evaluated windows, forward thunk) pairs.

    Models with ``forward_sequences`` (DeRefNet) get whole trajectories, so each frame's
    features are computed once and shared by the windows that contain it; the windows of a
    trajectory come out in the same order as :func:`eval_windows` lists them.
    """
    if hasattr(model, "forward_sequences"):
        per_traj = dataset.traj_len - 2 * HALF
        images = dataset.trajectory_images()
        step = max(1, batch_size // per_traj)
        for first in range(0, dataset.n_trajectories, step):
            frames = torch.from_numpy(images[first:first + step].astype(np.float32)).to(device)
            starts = torch.zeros(len(frames), dtype=torch.int64, device=device)
            yield (slice(first * per_traj, (first + len(frames)) * per_traj),
                   lambda f=frames, s=starts: model.forward_sequences(f, s))
        return
    for start in range(0, len(windows), batch_size):
        w = torch.from_numpy(windows[start:start + batch_size]).to(device)
        t = torch.from_numpy(frame_index[start:start + batch_size]).to(device)
        yield slice(start, start + len(w)), lambda w=w, t=t: model(w, t)


def predict_maps(model: Unmixer, dataset: SeqDataset, batch_size: int = 256) -> Predictions:
    """Run ``model`` on every evaluated window in eval mode under ``torch.inference_mode``.

    The model's train/eval mode is restored afterwards, so a training loop can call this.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    windows, frame_index, frames = eval_windows(dataset)
    device = _model_device(model)
    maps = np.empty((len(windows), HR, HR), dtype=np.float32)
    forward_s = 0.0
    with _inference(model):
        for where, forward in _batches(model, dataset, windows, frame_index, batch_size,
                                       device):
            tic = time.perf_counter()
            out, _ = forward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_s += time.perf_counter() - tic
            n = where.stop - where.start
            if out.numel() != n * HR * HR:
                raise ValueError(
                    f"{type(model).__name__} returned maps of shape {tuple(out.shape)} for "
                    f"{n} windows; the model interface requires (B, {HR}, {HR})"
                )
            maps[where] = out.float().cpu().numpy().reshape(n, HR, HR)
    return Predictions(maps, windows, frames, forward_s)


def detections_from_maps(
    maps: np.ndarray, windows: np.ndarray, mode: str = "grid", extractor=None
) -> list[np.ndarray]:
    """Turn output maps into per-frame detections (n_i, 3) = (row, col, score), LR pixels.

    Parameters
    ----------
    maps : ndarray of shape (N, 33, 33)
        Output maps (grey levels).
    windows : ndarray of shape (N, 5, 11, 11)
        The input windows (used by the ``points`` extractor only).
    mode : {"grid", "points"}
        ``grid``: every cell ≥ 70 is a detection at its cell centre (the reference rule).
        ``points``: sub-pixel points from ``extractor(maps, windows)``.
    extractor : callable, optional
        ``(maps (B, 33, 33), windows (B, 5, 11, 11)) -> list of (n, 3)``; defaults to
        ``models.extract.extract_points``.
    """
    if mode == "grid":
        return grid_detections(maps)
    if mode != "points":
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if extractor is None:
        extractor = extract_points
    points = list(extractor(maps, windows))
    if len(points) != len(maps):
        raise ValueError(f"the extractor returned {len(points)} frames for {len(maps)} maps")
    return points


def evaluate_model(
    model: Unmixer,
    dataset: SeqDataset,
    mode: str = "grid",
    batch_size: int = 256,
    extractor=None,
) -> dict:
    """CSO-mAP of ``model`` on ``dataset`` (evaluated frames 2 … T−3 of every trajectory).

    Returns
    -------
    dict
        ``mAP``, ``AP05`` … ``AP25`` (fractions 0..1), ``frames`` (frames scored),
        ``forward_s`` and ``windows_per_s`` (forward time only).
    """
    pred = predict_maps(model, dataset, batch_size)
    dets = detections_from_maps(pred.maps, pred.windows, mode, extractor)
    result = summarize(match_detections(dets, ground_truths(dataset, pred.frames)))
    return {**result, **_speed(pred)}


def _speed(pred: Predictions) -> dict:
    rate = len(pred.frames) / pred.forward_s if pred.forward_s > 0 else float("inf")
    return {"frames": len(pred.frames), "forward_s": pred.forward_s, "windows_per_s": rate}


def grid_oracle(dataset: SeqDataset) -> dict:
    """CSO-mAP of the exact GT maps in grid mode on the evaluated frames of ``dataset``.

    The GT map snaps each target to its nearest HR cell, so only grid quantisation is scored:
    the reference level for grid-mode output (facts §3.2; a model whose scores rank well-placed
    cells first can exceed it, since all GT cells here share similar brightness scores).
    """
    frames, _ = eval_frames(dataset)
    maps = gt_map(dataset.targets[frames])
    return summarize(match_detections(grid_detections(maps), ground_truths(dataset, frames)))


def count_macs(model: Unmixer, window: np.ndarray, frame_index: int) -> int:
    """MACs of one forward over one window (FLOPs / 2 by ``FlopCounterMode``).

    Parameters
    ----------
    window : ndarray of shape (5, 11, 11)
        A real input window (ISTA's cost depends on its data through the iteration count).
    frame_index : int
        Index of its middle frame within the trajectory.
    """
    device = _model_device(model)
    w = torch.as_tensor(window, dtype=torch.float32, device=device)[None]
    t = torch.tensor([frame_index], dtype=torch.int64, device=device)
    with _inference(model), FlopCounterMode(display=False) as counter:
        model(w, t)
    return counter.get_total_flops() // 2


def count_params(model: torch.nn.Module) -> int:
    """Number of learned parameters (buffers such as Φ and Qinit are not counted)."""
    return sum(p.numel() for p in model.parameters())


def plot_pr(matching: Matching, path: str | Path, title: str) -> None:
    """Write a PNG with one precision-recall curve per distance threshold."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas

    fig = Figure(figsize=(5, 4), dpi=120)
    ax = fig.add_subplot()
    for delta, flags in zip(matching.thresholds, matching.tp, strict=True):
        recall, precision = precision_recall(flags, matching.n_gt)
        ax.plot(recall, precision, label=f"δ = {delta:.2f} px")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)


def _si(value: float) -> str:
    for factor, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " K")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:.0f}"


def format_table(rows: list[dict]) -> str:
    """Rows in the style of the paper's Table VII (APs ×100, 2 decimals)."""
    keys = ["mAP", *(ap_key(d) for d in THRESHOLDS)]
    head = ["Method", "windows/s", "Params", "MACs/window", "MACs/traj", "CSO-mAP", *keys[1:]]
    lines = []
    for row in rows:
        cost = [
            _si(row[k]) if row.get(k) is not None else "-"
            for k in ("windows_per_s", "params", "macs", "macs_per_trajectory")
        ]
        lines.append([row["name"], *cost, *(f"{100 * row[k]:.2f}" for k in keys)])
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = " | ".join(f"{{:>{w}}}" for w in widths)
    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*head), sep, *(fmt.format(*r) for r in lines)])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered model name, e.g. ista")
    parser.add_argument("--weights", help="weights .pt file (default: the shipped weights)")
    parser.add_argument(
        "--data",
        required=True,
        help="dataset root (official layout or SPLIT.npz files), a split folder or an .npz file",
    )
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--mode", choices=MODES, default="grid", help="detections from maps")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--plot", help="write a precision-recall PNG to this file")
    parser.add_argument(
        "--limit-trajectories", type=_positive_int, help="score only the first N trajectories"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=256, help="windows per forward"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--oracle", action="store_true", help="also score the exact GT maps in grid mode"
    )
    parser.add_argument(
        "--extract", action="append", default=[], metavar="KEY=VALUE",
        help="points mode: set an ExtractorConfig field (e.g. refine=splat); repeatable",
    )


def extractor_config(pairs: list[str]):
    """ExtractorConfig from ``KEY=VALUE`` strings (values YAML-parsed); unknown keys named."""
    known = {f.name for f in fields(ExtractorConfig)}
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--extract {pair!r}: expected KEY=VALUE with KEY one of "
                             f"{sorted(known)}")
        values[key] = yaml.safe_load(text)
    return ExtractorConfig(**values)


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data, args.split)
    if args.limit_trajectories is not None:
        dataset = dataset.subset(range(min(args.limit_trajectories, dataset.n_trajectories)))
    model, _ = load_model(args.model, args.weights)
    model.to(args.device)
    weights = Path(args.weights) if args.weights else default_weights(args.model)
    weights = weights if weights.exists() else None

    pred = predict_maps(model, dataset, args.batch_size)
    ext_cfg = extractor_config(args.extract)
    dets = detections_from_maps(pred.maps, pred.windows, args.mode,
                                lambda m, w: extract_points(m, w, ext_cfg))
    matching = match_detections(dets, ground_truths(dataset, pred.frames))
    macs = count_macs(model, pred.windows[0], int(eval_frames(dataset)[1][0]))
    result = {
        "model": args.model,
        **summarize(matching),
        "params": count_params(model),
        "macs": macs,
        "macs_per_trajectory": macs * (dataset.traj_len - 2 * HALF),
        **_speed(pred),
        "weights": str(weights) if weights else None,
        "weights_sha256": sha256_file(weights) if weights else None,
        "data": str(Path(args.data).resolve()),
        "split": args.split,
        "mode": args.mode,
        "extractor": asdict(ext_cfg) if args.mode == "points" else None,
        "trajectories": dataset.n_trajectories,
        "device": args.device,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
    }
    rows = [{"name": args.model, **result}]
    if args.oracle:
        result["grid_oracle"] = grid_oracle(dataset)
        rows.append({"name": "grid oracle", **result["grid_oracle"]})
    print(format_table(rows))
    print(f"{result['frames']} frames, {dataset.n_trajectories} trajectories, mode {args.mode}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot_pr(matching, args.plot, f"{args.model} ({args.mode}), {args.split}")
    return 0
