"""CLI: ``python -m models {train,evaluate,bench} ...``."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("models.train", "train any registered model"),
    "evaluate": ("models.evaluate", "score a model with CSO-mAP on a dataset split"),
    "bench": ("models.bench", "measure windows/s and latency on this machine"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__))
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
