"""CLI: ``python -m models COMMAND ...``; COMMAND is one of :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("models.train", "train any registered model"),
    "train-many": ("models.train_many", "train several models under one equal budget"),
    "evaluate": ("models.evaluate", "score a model with CSO-mAP on a dataset split"),
    "bench": ("models.bench", "measure windows/s and latency on this machine"),
    "list": ("models.catalog", "every registered model: family, params, MACs, weights"),
    "table": ("models.table", "Table VII side by side: paper, ours in grid and points mode"),
    "compare": ("models.compare", "the paper's Fig. 6: maps and points of models on frames"),
    "layouts": ("models.layouts", "learn the target layouts of a training split (the "
                                  "extractor's layout prior)"),
    "robustness": ("models.robustness", "Tables IV, V and VI side by side: backgrounds, noise, "
                                        "2-8 targets"),
    "calibrate": ("models.calibrate", "estimate the sensor profile (PSF sigma, noise, "
                                      "saturation) from the isolated targets in data"),
    "generalization": ("models.generalization", "every model on every scene family (paper, "
                                                "CSIST-100K, random layouts, one target, PSF "
                                                "and noise), beside the ceiling"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        if name == chosen:  # import only the chosen command (torch-heavy modules)
            module = importlib.import_module(module_name)
            sp.description = module.__doc__
            module.add_arguments(sp)
    args = parser.parse_args(argv)
    from models.config import ConfigError
    from models.weights import WeightsError
    from sim.dataset import DatasetError

    try:
        return int(module.run(args) or 0)
    except (ConfigError, DatasetError, WeightsError) as exc:  # each message names the fix
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
