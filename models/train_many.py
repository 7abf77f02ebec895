"""``python -m models train-many``: train several recipes under one equal budget, score each on
the test split, and optionally ship their weights.

Each recipe ``configs/models/<recipe>.yaml`` (a registered model's name, or a variant such as
``lista-faithful``) trains with the same overrides (``--budget-minutes``, ``--device``,
``--set``) into ``OUT/<recipe>/``; a recipe that fails is reported and the others go on.
``--parallel N`` runs N trainings at a time in worker processes (one GPU shared by N small
models, or N CPU jobs of one thread each): the budget is then wall-clock training time under
that sharing, the same for every recipe. ``--resume`` continues every run that has a checkpoint
(a run whose budget is spent only re-validates). ``--test-trajectories N`` scores each best
checkpoint on the first N trajectories of the test split in grid and points mode and writes the
figures into its ``best.json`` (``test_metrics``). ``OUT/summary.json`` lists, per recipe, its
status, best validation CSO-mAP, test figures, steps, epochs and training seconds. ``--ship``
copies each best checkpoint of a model's own recipe (not of a variant) to
``models/weights/<name>.pt`` (+ ``.json``) when it is at most 10 MB.

Example (the equal-budget toolkit run on one GPU)::

    python -m models train-many --models srcnn,espcn,lista,lista-faithful --budget-minutes 2 \\
        --device cuda --parallel 4 --test-trajectories 100 --out runs/toolkit --ship
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
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


def score_on_test(trainer: Trainer, trajectories: int) -> dict:
    """Grid and points CSO-mAP (fractions) of the run's ``best.pt`` on the first
    ``trajectories`` of the test split, also written into ``best.json`` as ``test_metrics``
    (the .pt file and its sha256 are unchanged)."""
    from models.harness import predict_maps, score_predictions
    from models.weights import load_weights
    from sim import load_dataset

    cfg = trainer.cfg
    test = load_dataset(cfg.data, "test")
    test = test.subset(range(min(trajectories, test.n_trajectories)))
    best = trainer.out / "best.pt"
    model, meta = load_weights(best)
    pred = predict_maps(model.to(trainer.device), test)
    metrics = {mode: score_predictions(pred, test, mode) for mode in ("grid", "points")}
    metrics["set"] = f"{test.n_trajectories} trajectories of {cfg.data} (test)"
    best.with_suffix(".json").write_text(
        json.dumps({**meta, "test_metrics": metrics}, indent=2, sort_keys=True) + "\n")
    return metrics


def train_one(recipe: str, overrides: list[str], out: Path, resume: bool,
              test_trajectories: int = 0) -> dict:
    """Train ``recipe`` with ``overrides`` (and score it on the test split); its summary entry."""
    cfg = load_config(TrainConfig, RECIPES / f"{recipe}.yaml", [*overrides, f"out={out / recipe}"])
    trainer = Trainer(cfg, progress=False)
    checkpoint = out / recipe / "last.ckpt"
    if resume and checkpoint.exists():
        trainer.resume(checkpoint)
    result = trainer.run()
    entry = {"status": "ok", "model": cfg.model, "val_mAP": trainer.best,
             "last_val": result["mAP"], "steps": trainer.step,
             "epochs": round(trainer.step * cfg.batch_trajectories
                             / trainer.train_ds.n_trajectories, 3),
             "train_seconds": round(trainer.seconds, 1), "budget_minutes": cfg.budget_minutes}
    if test_trajectories:
        test = score_on_test(trainer, test_trajectories)
        entry["test_grid_mAP"] = test["grid"]["mAP"]
        entry["test_points_mAP"] = test["points"]["mAP"]
    return entry


def _train_guarded(recipe: str, *args) -> dict:
    """:func:`train_one`, with a failure turned into its summary entry (one failed recipe
    must not stop the others; in a worker process the traceback is logged there)."""
    try:
        return train_one(recipe, *args)
    except Exception as exc:
        logger.exception("train-many: %s failed", recipe)
        return {"status": f"failed: {type(exc).__name__}: {exc}"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True,
                   help="comma-separated recipes: registered model names or variants such as "
                        "lista-faithful (configs/models/<recipe>.yaml)")
    p.add_argument("--budget-minutes", type=float, required=True,
                   help="training time of every recipe (the equal budget)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the recipes' device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every recipe, e.g. --set threads=1; repeatable")
    p.add_argument("--out", default="runs/toolkit", help="folder of the runs")
    p.add_argument("--parallel", type=int, default=1,
                   help="trainings at a time, each in its own process (default 1: in this one)")
    p.add_argument("--test-trajectories", type=int, default=0,
                   help="score each best checkpoint on this many test trajectories (0 = no)")
    p.add_argument("--resume", action="store_true", help="continue runs from OUT/NAME/last.ckpt")
    p.add_argument("--ship", action="store_true",
                   help="copy each best checkpoint (≤ 10 MB) of a model's own recipe to "
                        "models/weights/")


def _results(recipes: list[str], args, overrides: list[str], out: Path):
    """(recipe, summary entry) pairs as the trainings finish."""
    job = (overrides, out, args.resume, args.test_trajectories)
    if args.parallel <= 1:
        for recipe in recipes:
            yield recipe, _train_guarded(recipe, *job)
        return
    context = multiprocessing.get_context("spawn")  # CUDA cannot be shared with a fork
    with ProcessPoolExecutor(args.parallel, mp_context=context) as pool:
        futures = {pool.submit(_train_guarded, recipe, *job): recipe for recipe in recipes}
        for future in as_completed(futures):
            yield futures[future], future.result()


def run(args: argparse.Namespace) -> int:
    recipes = args.models.split(",")
    unknown = [r for r in recipes if not (RECIPES / f"{r}.yaml").exists()]
    if unknown:
        raise ConfigError(f"--models: {unknown} have no recipe in {RECIPES} (recipes: "
                          f"{', '.join(sorted(p.stem for p in RECIPES.glob('*.yaml')))})")
    if args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*args.set, f"budget_minutes={args.budget_minutes}"]
    if args.device:
        overrides.append(f"device={args.device}")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for recipe, entry in _results(recipes, args, overrides, out):
        if args.ship and entry["status"] == "ok":
            entry["shipped"] = (ship(out / recipe, recipe) if recipe in MODELS
                                else "not shipped: a variant of the model's own recipe")
        summary[recipe] = entry
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{recipe}: {json.dumps(entry)}", flush=True)
    return 0 if all(summary[r]["status"] == "ok" for r in recipes) else 1
