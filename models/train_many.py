"""``python -m models train-many``: train several registered models one after another under one
equal budget, and optionally ship their weights.

Each model trains from its recipe ``configs/models/<name>.yaml`` with the same overrides
(``--budget-minutes``, ``--device``, ``--set``) into ``OUT/<name>/``; a model that fails is
reported and the others go on. ``--resume`` continues every run that has a checkpoint (a run
whose budget is spent only re-validates). ``OUT/summary.json`` lists, per model, its status,
best validation CSO-mAP, steps, epochs and training seconds. ``--ship`` copies each best
checkpoint to ``models/weights/<name>.pt`` (+ ``.json``) when it is at most 10 MB.

Example (the equal-budget toolkit run of a 2-core session)::

    python -m models train-many --models istanet,fistanet --budget-minutes 15 \\
        --set threads=1 --out runs/toolkit --ship
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from models.config import ConfigError, load_config
from models.registry import MODELS
from models.train import TrainConfig, Trainer
from models.weights import default_weights

logger = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "models"
#: Largest weights file that ships with the project.
SHIP_LIMIT_BYTES = 10 * 1024 * 1024


def ship(run_dir: Path, name: str) -> str:
    """Copy ``run_dir/best.pt`` and its sidecar to the shipped weights of ``name``.

    Returns what happened: ``"shipped"``, or why not (no best checkpoint, over 10 MB).
    """
    best = run_dir / "best.pt"
    if not best.exists():
        return "not shipped: no best.pt"
    size = best.stat().st_size
    if size > SHIP_LIMIT_BYTES:
        return f"not shipped: {size / 2**20:.1f} MB is over the 10 MB limit"
    target = default_weights(name)
    shutil.copyfile(best, target)
    shutil.copyfile(best.with_suffix(".json"), target.with_suffix(".json"))
    return "shipped"


def train_one(name: str, overrides: list[str], out: Path, resume: bool) -> dict:
    """Train ``name`` from its recipe with ``overrides``; its summary entry."""
    cfg = load_config(TrainConfig, RECIPES / f"{name}.yaml", [*overrides, f"out={out / name}"])
    trainer = Trainer(cfg, progress=False)
    checkpoint = out / name / "last.ckpt"
    if resume and checkpoint.exists():
        trainer.resume(checkpoint)
    result = trainer.run()
    return {"status": "ok", "val_mAP": trainer.best, "last_val": result["mAP"],
            "steps": trainer.step, "epochs": round(trainer.step * cfg.batch_trajectories
                                                   / trainer.train_ds.n_trajectories, 3),
            "train_seconds": round(trainer.seconds, 1), "budget_minutes": cfg.budget_minutes}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, help="comma-separated registered model names")
    p.add_argument("--budget-minutes", type=float, required=True,
                   help="training time of every model (the equal budget)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the recipes' device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every recipe, e.g. --set threads=1; repeatable")
    p.add_argument("--out", default="runs/toolkit", help="folder of the runs")
    p.add_argument("--resume", action="store_true", help="continue runs from OUT/NAME/last.ckpt")
    p.add_argument("--ship", action="store_true",
                   help="copy each best checkpoint (≤ 10 MB) to models/weights/")


def run(args: argparse.Namespace) -> int:
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS or not (RECIPES / f"{n}.yaml").exists()]
    if unknown:
        raise ConfigError(f"--models: {unknown} are not registered models with a recipe in "
                          f"{RECIPES}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*args.set, f"budget_minutes={args.budget_minutes}"]
    if args.device:
        overrides.append(f"device={args.device}")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in names:
        try:
            entry = train_one(name, overrides, out, args.resume)
        except Exception as exc:  # one failed model must not stop the others
            logger.exception("train-many: %s failed", name)
            entry = {"status": f"failed: {type(exc).__name__}: {exc}"}
        if args.ship and entry["status"] == "ok":
            entry["shipped"] = ship(out / name, name)
        summary[name] = entry
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{name}: {json.dumps(entry)}", flush=True)
    return 0 if all(summary[n]["status"] == "ok" for n in names) else 1
