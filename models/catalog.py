"""``python -m models list [--json]``: every registered model with its family, learned
parameters, MACs per window (:func:`models.harness.count_macs` on a real window), Table VII's
CSO-mAP and whether shipped weights exist.
"""

from __future__ import annotations

import argparse
import json

from models.harness import count_macs, count_params
from models.paper import paper_row
from models.protocol import eval_windows
from models.registry import MODELS, get_model, list_models
from models.weights import default_weights
from sim.dataset import simulate


def describe(name: str, window, frame_index: int) -> dict:
    """The catalogue entry of registered model ``name`` (default config)."""
    model = get_model(name).eval()
    paper = paper_row(name)
    return {
        "name": name,
        "family": MODELS[name].family,
        "params": count_params(model),
        "macs_per_window": count_macs(model, window, frame_index),
        "paper": paper["mAP"] if paper else None,
        "weights": default_weights(name).exists(),
        "trainable": model.trainable,
    }


def catalogue(names: list[str] | None = None) -> list[dict]:
    """Entries of ``names`` (default: every registered model), in registry order."""
    windows, frame_index, _ = eval_windows(simulate(1, seed=0))
    return [describe(n, windows[0], int(frame_index[0])) for n in names or list_models()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    p.add_argument("--models", help="comma-separated names (default: all registered)")


def run(args: argparse.Namespace) -> int:
    rows = catalogue(args.models.split(",") if args.models else None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':13s} {'family':11s} {'params':>11s} {'MACs/window':>14s} {'paper':>6s} "
          "weights")
    for r in rows:
        paper = f"{r['paper']:.2f}" if r["paper"] is not None else "-"
        weights = "yes" if r["weights"] else ("not needed" if not r["trainable"] else "no")
        print(f"{r['name']:13s} {r['family']:11s} {r['params']:11,d} "
              f"{r['macs_per_window']:14,d} {paper:>6s} {weights}")
    return 0
