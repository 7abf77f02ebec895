"""``python -m models evaluate``: score a model with CSO-mAP on a dataset split, the SeqCSIST way.

The protocol is :mod:`models.protocol`, the scoring :mod:`models.harness`; this module is the
command line around them: a Table VII-style table, a JSON file and a precision-recall plot.

Usage::

    python -m models evaluate --model ista --data /tmp/eval --split test --out ista.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.config import ConfigError, build_config, parse_override, set_path
from models.diagnostics import count_accuracy
from models.distributed import join, leave
from models.extract import ExtractorConfig, estimate_noise, extract_points
from models.harness import (
    MODES,
    count_macs,
    count_params,
    detections_from_maps,
    predict_maps,
    speed_fields,
)
from models.metric import (
    THRESHOLDS,
    Matching,
    ap_key,
    match_detections,
    precision_recall,
    summarize,
)
from models.precision import PRECISIONS, resolve_precision, torch_dtype
from models.protocol import (
    HALF,
    eval_frames,
    grid_oracle,
    ground_truths,
    snapped_oracle,
    splat_oracle,
)
from models.weights import default_weights, load_model, psf_mismatch, sha256_file
from sim import load_dataset


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


def noise_summary(est: np.ndarray) -> dict:
    """Median and 10/90 % quantiles of the extractor's per-window noise estimates
    (:func:`models.extract.estimate_noise`: grey levels, no floor), to compare with a
    dataset's known noise σ."""
    return {"median": float(np.median(est)), "p10": float(np.quantile(est, 0.1)),
            "p90": float(np.quantile(est, 0.9))}


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
        "--precision", choices=PRECISIONS, default="fp32",
        help="fp32 (default), bf16, or auto: bf16 where the CPU computes it natively",
    )
    parser.add_argument(
        "--oracle", action="store_true",
        help="also score the exact GT maps in grid mode and the exact GT points in snapped mode",
    )
    parser.add_argument(
        "--subtract-background", action="store_true",
        help="subtract each trajectory's background level (median of the patches' outer "
             "ring) first, as the live cropper does; for sets made with --backgrounds",
    )
    parser.add_argument(
        "--extract", action="append", default=[], metavar="KEY=VALUE",
        help="points/snapped mode: set an ExtractorConfig field (e.g. refine=splat); repeatable",
    )


def extractor_config(pairs: list[str]) -> ExtractorConfig:
    """ExtractorConfig from ``KEY=VALUE`` strings (the ``--set`` syntax of every command)."""
    values: dict = {}
    try:
        for pair in pairs:
            set_path(values, *parse_override(pair))
        return build_config(ExtractorConfig, values, "--extract")
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data, args.split)
    if args.limit_trajectories is not None:
        dataset = dataset.subset(range(min(args.limit_trajectories, dataset.n_trajectories)))
    if args.subtract_background:
        dataset = dataset.background_subtracted()
    ranks = join(args.device)
    device = (torch.device("cuda", torch.cuda.current_device())
              if ranks.distributed and torch.device(args.device).type == "cuda" else args.device)
    model, meta = load_model(args.model, args.weights)
    mismatch = psf_mismatch(args.model, meta, dataset.sigma)
    if mismatch and ranks.main:
        print(f"warning: {mismatch}", file=sys.stderr, flush=True)
    precision = resolve_precision(args.precision, str(device))
    model.to(device, torch_dtype(precision))
    weights = Path(args.weights) if args.weights else default_weights(args.model)
    weights = weights if weights.exists() else None

    ext_cfg = extractor_config(args.extract)
    mine = range(ranks.rank, dataset.n_trajectories, ranks.world)  # all of it in one process
    pred = predict_maps(model, dataset.subset(mine), args.batch_size)
    dets = detections_from_maps(pred.maps_for(args.mode), pred.windows, args.mode,
                                lambda m, w, s: extract_points(m, w, ext_cfg, s, pred.sigma),
                                pred.saturation)
    # the dataset index of each scored frame, to merge the shards in dataset order
    frames = np.asarray(mine)[pred.frames // dataset.traj_len] * dataset.traj_len \
        + pred.frames % dataset.traj_len
    from_points = args.mode != "grid"
    noise = estimate_noise(pred.windows) if from_points else None
    macs = count_macs(model, pred.windows[0], int(eval_frames(dataset)[1][0])) \
        if ranks.main else None
    shards = ranks.gather((frames, dets, noise, pred.forward_s))
    leave(ranks)
    if shards is None:  # not rank 0: rank 0 scores and reports
        return 0
    frames = np.concatenate([f for f, _, _, _ in shards])
    order = np.argsort(frames, kind="stable")
    frames = frames[order]
    dets = [d for _, shard, _, _ in shards for d in shard]
    dets = [dets[i] for i in order]
    forward_s = max(s for _, _, _, s in shards)  # the slowest shard: the run's wall time
    truths = ground_truths(dataset, frames)
    matching = match_detections(dets, truths)
    result = {
        "model": args.model,
        **summarize(matching),
        "precision": precision,
        "params": count_params(model),
        "macs": macs,
        "macs_per_trajectory": macs * (dataset.traj_len - 2 * HALF),
        **speed_fields(len(frames), forward_s),
        "ranks": ranks.world,
        "weights": str(weights) if weights else None,
        "weights_sha256": sha256_file(weights) if weights else None,
        "data": str(Path(args.data).resolve()),
        "split": args.split,
        "subtract_background": args.subtract_background,
        "mode": args.mode,
        "extractor": asdict(ext_cfg) if from_points else None,
        "noise_estimate": (noise_summary(np.concatenate([n for _, _, n, _ in shards]))
                           if from_points else None),
        "count_accuracy": count_accuracy(dets, truths) if from_points else None,
        "trajectories": dataset.n_trajectories,
        "device": args.device,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
    }
    rows = [{"name": args.model, **result}]
    if args.oracle:
        result["grid_oracle"] = grid_oracle(dataset)
        rows.append({"name": "grid oracle", **result["grid_oracle"]})
        result["splat_oracle"] = splat_oracle(dataset)
        rows.append({"name": "splat oracle", **result["splat_oracle"]})
        result["snapped_oracle"] = snapped_oracle(dataset)
        rows.append({"name": "snapped oracle", **result["snapped_oracle"]})
    print(format_table(rows))
    print(f"{result['frames']} frames, {dataset.n_trajectories} trajectories, mode {args.mode}")
    if result["count_accuracy"]:
        print("target count right: " + ", ".join(
            f"K={k} {100 * c['right']:.1f} % of {c['windows']}"
            for k, c in result["count_accuracy"].items()))
    if result["noise_estimate"]:
        est = result["noise_estimate"]
        print(f"pixel noise estimated per window: median {est['median']:.2f} grey levels "
              f"(10-90 %: {est['p10']:.2f}-{est['p90']:.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot_pr(matching, args.plot, f"{args.model} ({args.mode}), {args.split}")
    return 0
