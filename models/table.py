"""``python -m models table``: the paper's Table VII side by side with ours, from one run.

For every registered model (or ``--models``) with weights, or without need of any, one
prediction pass over the evaluation protocol (:mod:`models.protocol`) scored in grid mode (the
paper's protocol) and in points mode (the sub-pixel extractor), its learned parameters and MACs
per window, its windows/s at batch 64 measured in this run on this machine, and the training it
got (budget, epochs reached, from the weights' metadata). Models without weights are listed as
"not trained here" with the command that trains them.

With ``--runs SUMMARY`` (the ``summary.json`` of a ``python -m models train-many`` run with
``--test-trajectories``), a first table shows every recipe of that run at its equal budget,
variants such as ``lista-faithful`` included: the test figures measured after training, the
epochs reached, and the learned parameters and MACs per window of the recipe's model.

Output: a Markdown file (``--out``, default ``benchmarks/table7.md``) and, with ``--json``, the
rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from models.bench import time_windows
from models.config import load_config
from models.harness import count_macs, count_params, predict_maps, score_predictions
from models.paper import AP_KEYS, METHOD_NAMES, paper_row
from models.protocol import eval_frames, eval_windows
from models.registry import MODELS, get_model, list_models
from models.train import TrainConfig
from models.train_many import RECIPES
from models.weights import WeightsError, load_model
from sim import load_dataset


def table_row(name: str, dataset, batch_size: int = 256, repeats: int = 3) -> dict:
    """Paper figures and ours for model ``name`` on ``dataset`` (APs as fractions)."""
    row = {"name": name, "family": MODELS[name].family, "paper": paper_row(name)}
    try:
        model, meta = load_model(name)
    except WeightsError:
        row["status"] = (f"not trained here: python -m models train "
                         f"--config configs/models/{name}.yaml")
        return row
    pred = predict_maps(model, dataset, batch_size)
    _, frame_index = eval_frames(dataset)
    recipe = meta.get("train_config", {})
    row.update(
        status="ok",
        grid=score_predictions(pred, dataset, "grid"),
        points=score_predictions(pred, dataset, "points"),
        params=count_params(model),
        macs_per_window=count_macs(model, pred.windows[0], int(frame_index[0])),
        windows_per_s=time_windows(model, 64, repeats)["windows_per_s"],
        budget_minutes=recipe.get("budget_minutes") or None,
        epochs=meta.get("epochs"),
        train_seconds=meta.get("train_seconds"),
        weights_sha256=meta.get("sha256"),
    )
    return row


def table_order() -> list[str]:
    """Registered model names in the paper's Table VII order, ours after them."""
    return [*METHOD_NAMES, *(n for n in list_models() if n not in METHOD_NAMES)]


def budget_rows(summary_path: str | Path, dataset) -> list[dict]:
    """One row per recipe of an equal-budget run, in the registry's order (variants after their
    model): its summary entry, the paper's figures, params and MACs per window of its model."""
    summary = json.loads(Path(summary_path).read_text())
    windows, _, _ = eval_windows(dataset)
    _, frame_index = eval_frames(dataset)
    order = table_order()
    rows = []
    for recipe, entry in summary.items():
        cfg = load_config(TrainConfig, RECIPES / f"{recipe}.yaml", [])
        model = get_model(cfg.model, **cfg.model_config)
        rows.append({"recipe": recipe, "name": cfg.model, "paper": paper_row(cfg.model), **entry,
                     "params": count_params(model),
                     "macs_per_window": count_macs(model, windows[0], int(frame_index[0]))})
    return sorted(rows, key=lambda r: (order.index(r["name"]), r["recipe"] != r["name"],
                                       r["recipe"]))


def budget_markdown(rows: list[dict], summary_path: str | Path) -> str:
    """The equal-budget rows as a Markdown table (APs ×100)."""
    head = ["recipe", "paper mAP", "grid mAP", "points mAP", "val grid mAP", "epochs", "steps",
            "trainings sharing the GPU", "params", "MACs/window"]
    budgets = sorted({r["budget_minutes"] for r in rows if r["status"] == "ok"})
    lines = [f"Equal budget: every recipe of `{summary_path}` trained for "
             f"{' / '.join(format(b, 'g') for b in budgets)} minutes of wall-clock time, then "
             "scored on the test split (grid = the paper's protocol, points = our sub-pixel "
             "extractor). CSO-mAP ×100.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = METHOD_NAMES.get(r["name"], r["name"])
        cells = [f"{label} (`{r['recipe']}`)", _cell(r["paper"] and r["paper"]["mAP"], ".2f")]
        if r["status"] != "ok":
            cells += [r["status"]] + [""] * (len(head) - 3)
        else:
            cells += [f"{100 * r['test_grid_mAP']:.2f}", f"{100 * r['test_points_mAP']:.2f}",
                      f"{100 * r['val_mAP']:.2f}", f"{r['epochs']:.2f}", str(r["steps"]),
                      _cell(r.get("jobs_sharing_gpu"), "d"), f"{r['params']:,}",
                      f"{r['macs_per_window']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: list[dict], source: str) -> str:
    """The rows as a Markdown table (APs ×100)."""
    head = ["method", "paper mAP", "grid mAP", *(f"grid {k}" for k in AP_KEYS[1:]),
            "points mAP", "params", "MACs/window", "windows/s", "budget (min)", "epochs"]
    lines = [f"CSO-mAP ×100 on {source}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        paper = r["paper"]
        cells = [f"{METHOD_NAMES.get(r['name'], r['name'])} (`{r['name']}`)",
                 _cell(paper and paper["mAP"], ".2f")]
        if r["status"] != "ok":
            cells += [r["status"]] + [""] * (len(head) - 3)
        else:
            grid = [100 * r["grid"][k] for k in AP_KEYS]
            cells += [f"{v:.2f}" for v in grid]
            cells += [f"{100 * r['points']['mAP']:.2f}", f"{r['params']:,}",
                      f"{r['macs_per_window']:,}", f"{r['windows_per_s']:.1f}",
                      _cell(r["budget_minutes"], "g"), _cell(r["epochs"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root, split folder or .npz")
    p.add_argument("--split", default="test")
    p.add_argument("--models", help="comma-separated names (default: all registered)")
    p.add_argument("--limit-trajectories", type=int, help="score only the first N trajectories")
    p.add_argument("--out", default="benchmarks/table7.md", help="Markdown output")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--runs", help="summary.json of an equal-budget train-many run: adds its "
                                  "table")


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data, args.split)
    if args.limit_trajectories:
        dataset = dataset.subset(range(min(args.limit_trajectories, dataset.n_trajectories)))
    names = args.models.split(",") if args.models else table_order()
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; registered: {', '.join(list_models())}")
    rows = []
    for name in names:
        rows.append(table_row(name, dataset))
        print(f"{name}: {rows[-1]['status']}", flush=True)
    source = (f"{dataset.n_trajectories} trajectories of {args.data} ({args.split}), "
              f"{torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}, "
              f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    text = markdown(rows, source)
    budget = budget_rows(args.runs, dataset) if args.runs else []
    if budget:
        text = (f"## At an equal budget\n\n{budget_markdown(budget, args.runs)}\n"
                f"## The shipped weights\n\n{text}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    if args.json:
        payload = {"source": source, "cpus": os.cpu_count(), "rows": rows, "budget_rows": budget}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0
