"""``python -m stages.irstd.train``: train a learned detector on simulated scenes.

One thread (``torch.set_num_threads(1)``), a wall-clock budget, Adam with a cosine learning
rate over the planned steps, random crops of simulated frames (:mod:`stages.irstd.data`),
the paper's loss on every output (MSHNet: SLS after a warm-up of 10 % of the steps; DNANet:
SoftIoU with deep supervision, the mean over the heads). Every ``--val-every`` seconds the
model detects in held-out full frames (flat, cluttered amplitude 40 and 80; seeds 900 000 …)
and is scored by Pd/Fa/IoU (:mod:`stages.detection_metrics`); the best by
``mean Pd + mean IoU − 1000 · mean Fa`` is kept, a checkpoint written each time (``--resume``
goes on from it). At the end the best weights are written to ``--out NAME.pt`` with
``NAME.json`` metadata (config, data recipe, steps, validation metrics, sha256, hardware,
command). Example::

    python -m stages.irstd.train --kind dnanet --minutes 35 --out models/weights/dnanet.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.machine import cpu_model
from stages.irstd.data import TRAIN_SEED, VAL_SEED, make_frames, sample_crops, validation_frames
from stages.irstd.losses import sls_loss, soft_iou_loss
from stages.irstd.nets import build

#: Shipped architectures (see :mod:`stages.irstd.nets` for the papers' widths).
DEFAULTS = {"mshnet": {"widths": [8, 16, 32, 64], "blocks": 1, "s2d": 4, "refine": True},
            "dnanet": {"widths": [8, 16, 32], "blocks": 1, "s2d": 4, "refine": True}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages.irstd.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=tuple(DEFAULTS), required=True)
    p.add_argument("--out", required=True, help="weights file NAME.pt (NAME.json beside it)")
    p.add_argument("--minutes", type=float, default=35.0, help="wall budget (default 35)")
    p.add_argument("--steps", type=int, default=20000,
                   help="planned steps of the cosine schedule (default 20000; the budget may "
                        "stop earlier)")
    p.add_argument("--scenes", type=int, default=300, help="training scenes (default 300)")
    p.add_argument("--frames-per-scene", type=int, default=2)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--crop", type=int, default=96, help="crop side (px, multiple of 32)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val-every", type=float, default=180.0, help="seconds between validations")
    p.add_argument("--val-frames", type=int, default=20, help="frames per validation set")
    p.add_argument("--widths", help="comma-separated channels per level (default: shipped)")
    p.add_argument("--no-refine", action="store_true",
                   help="without the full-resolution refinement (nets.Refine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="checkpoint file (default: runs/irstd/KIND.ckpt)")
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def supervised_loss(kind: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    warm: bool) -> torch.Tensor:
    """The paper's loss over all outputs of ``net`` on batch (x, y)."""
    out, sides = net(x, deep=True)
    if kind == "dnanet":
        return torch.stack([soft_iou_loss(o, y) for o in [out, *sides]]).mean()
    losses = [sls_loss(out, y, warm)]
    for i, s in enumerate(sides):
        target = F.max_pool2d(y, 2 ** i) if i else y
        losses.append(sls_loss(s, target, warm))
    return torch.stack(losses).mean()


def init_heads(net: torch.nn.Module, bias: float = -4.0) -> None:
    """Start every output at a probability of sigmoid(bias) ≈ 2 % (targets are rare)."""
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Conv2d) and name.startswith("heads"):
            torch.nn.init.constant_(module.bias, bias)


def validate(kind: str, net: torch.nn.Module, sets: dict) -> dict:
    """Pd / Fa / IoU per validation set (threshold 0.5) and the selection score."""
    from stages.detection_metrics import DetectionScore, group_centroids, truth_mask
    from stages.irstd.infer import detect_with_net

    net.eval()
    result = {}
    for name, items in sets.items():
        score = DetectionScore()
        for image, truth, psf in items:
            blobs, mask, _ = detect_with_net(image, net)
            score.add(blobs[:, :2], blobs[:, 3], group_centroids(truth), image.size, mask,
                      truth_mask(truth, image.shape, psf))
        s = score.summary()
        result[name] = {"Pd": s["Pd"], "Fa": s["Fa"], "IoU": s["IoU"] or 0.0}
    net.train()
    vals = list(result.values())
    result["score"] = (float(np.mean([v["Pd"] for v in vals]))
                       + float(np.mean([v["IoU"] for v in vals]))
                       - 1e3 * float(np.mean([v["Fa"] for v in vals])))
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    arch = dict(DEFAULTS[args.kind])
    if args.widths:
        arch["widths"] = [int(w) for w in args.widths.split(",")]
    if args.no_refine:
        arch["refine"] = False
    net = build(args.kind, arch["widths"], arch["blocks"], arch["s2d"], arch["refine"])
    if args.crop % net.stride:
        print(f"error: --crop must be a multiple of {net.stride}", file=sys.stderr)
        return 2
    init_heads(net)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ckpt = Path(args.checkpoint or f"runs/irstd/{args.kind}.ckpt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    step, best, best_state, history, elapsed0 = 0, None, None, [], 0.0
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step, best, best_state = state["step"], state["best"], state["best_state"]
        history, elapsed0 = state["history"], state["elapsed"]
        rng = np.random.default_rng(args.seed + step)
    t0 = time.time()
    images, masks = make_frames(args.scenes, TRAIN_SEED, args.frames_per_scene)
    sets = validation_frames(args.val_frames)
    data_seconds = time.time() - t0
    print(f"data: {len(images)} frames, {data_seconds:.0f} s", flush=True)
    start = time.time() - elapsed0
    budget = 60 * args.minutes
    last_val = time.time()
    losses: list[float] = []
    net.train()

    def checkpoint() -> None:
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step,
                    "best": best, "best_state": best_state, "history": history,
                    "elapsed": time.time() - start}, ckpt)

    while step < args.steps and time.time() - start < budget:
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = sample_crops(images, masks, args.batch, args.crop, rng)
        loss = supervised_loss(args.kind, net, torch.from_numpy(x), torch.from_numpy(y),
                               warm=step >= 0.1 * args.steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        done = step >= args.steps or time.time() - start >= budget
        if time.time() - last_val >= args.val_every or done:
            val = validate(args.kind, net, sets)
            entry = {"step": step, "minutes": round((time.time() - start) / 60, 2),
                     "loss": round(float(np.mean(losses[-200:])), 4), "val": val}
            history.append(entry)
            print(json.dumps(entry), flush=True)
            if best is None or val["score"] > best["score"]:
                best = {**val, "step": step}
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            checkpoint()
            last_val = time.time()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": args.kind, **arch, "state_dict": best_state}, out)
    meta = {
        "model": args.kind,
        "config": arch,
        "data_recipe": (f"stages.irstd.data.make_frames({args.scenes} scenes, seed "
                        f"{TRAIN_SEED}, {args.frames_per_scene} frames/scene 40 steps apart): "
                        "30 % flat (noise σ U(0.5, 3), ramp U(0, 40) on half), 70 % builtin "
                        "cluttered (amplitude U(15, 90), noise σ U(0.7, 2)), 4–10 groups; "
                        f"random {args.crop}² crops, 60 % near a target, flips/transposes"),
        "validation": (f"{args.val_frames} frames each of flat σ=1, builtin amplitude 40 and 80, "
                       f"seeds {VAL_SEED}…; score = mean Pd + mean IoU − 1000 · mean Fa"),
        "loss": "SLS (SoftIoU warm-up 10 % of steps), all outputs" if args.kind == "mshnet"
                else "SoftIoU, deep supervision (mean over heads)",
        "optimizer": f"Adam lr {args.lr} cosine over {args.steps} steps, batch {args.batch}",
        "steps": step, "best_step": best["step"], "val": best,
        "history": history,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(time.time() - start, 1), "data_seconds": round(data_seconds, 1),
        "hardware": f"{cpu_model()}, 1 thread (torch {torch.__version__}), 2 cores shared",
        "seed": args.seed,
        "command": "python -m stages.irstd.train " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"),
        "sha256": sha256(out),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} (best step {best['step']}, score {best['score']:.4f})", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
