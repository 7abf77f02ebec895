"""Command line: ``python -m sim {generate,show,backgrounds,bench} ...`` (``-h``: options)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from sim.backgrounds import DEFAULT_AMPLITUDE
from sim.bench import DEFAULT_OUT, run_bench
from sim.clutter import write_scenes
from sim.generate import FORMATS, generate
from sim.seqcsist_io import load_dataset
from sim.sheet import write_sheet
from sim.trajectory import TrajectoryRules


def _target_range(text: str) -> tuple[int, int]:
    """Parse "2-4" (or "3") into (min, max) targets per trajectory."""
    try:
        lo, _, hi = text.partition("-")
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range like 2-4") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= min <= max")
    return low, high


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="simulate a dataset: DIR/{train,val,test}")
    gen.add_argument("--out", required=True, help="dataset root to create")
    gen.add_argument("--trajectories", type=int, required=True,
                     help="total trajectories of 20 frames (SeqCSIST: 5000), split 70/15/15")
    gen.add_argument("--seed", type=int, required=True)
    gen.add_argument("--format", choices=FORMATS, default="seqcsist",
                     help="official PNG+XML layout or compact npz (default: seqcsist)")
    gen.add_argument("--targets", type=_target_range, default=(2, 4),
                     help="targets per trajectory, e.g. 2-4 (default) or 2-8")
    gen.add_argument("--noise", type=float, default=0.0,
                     help="additive Gaussian noise std in grey levels (default 0)")
    gen.add_argument("--backgrounds", metavar="DIR|builtin",
                     help="folder of images to crop backgrounds from (Table IV), or 'builtin' "
                          "for the built-in IR-like scenes (sim/clutter.py)")
    gen.add_argument("--background-amplitude", type=float, default=DEFAULT_AMPLITUDE,
                     help="grey levels of an image's full scale (default %(default)s)")
    gen.add_argument("--workers", type=int, default=2, help="writer processes (default 2)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    show = sub.add_parser("show", help="PNG sheet of one trajectory with its ground truth")
    show.add_argument("--data", required=True, help="dataset root, split folder or .npz file")
    show.add_argument("--split", default="test", help="split of a dataset root (default test)")
    show.add_argument("--trajectory", type=int, default=0, help="trajectory index (default 0)")
    show.add_argument("--scale", type=int, default=16, help="upscaling factor (default 16)")
    show.add_argument("--out", required=True, help="PNG file to write")

    scenes = sub.add_parser("backgrounds", help="write the built-in IR-like background scenes "
                                                "as 16-bit PNGs (to look at, or edit and use "
                                                "with --backgrounds DIR)")
    scenes.add_argument("--out", required=True, help="folder to write")
    scenes.add_argument("--seed", type=int, default=0)

    bench = sub.add_parser("bench", help="time generation in both formats; write JSON figures")
    bench.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file (default %(default)s)")
    bench.add_argument("--trajectories", type=int, default=5000)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--workers", type=int, default=2)
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            low, high = args.targets
            recipe = generate(
                args.out, args.trajectories, args.seed, fmt=args.format,
                rules=TrajectoryRules(min_targets=low, max_targets=high),
                noise_sigma=args.noise, backgrounds=args.backgrounds,
                background_amplitude=args.background_amplitude, workers=args.workers,
                progress=not args.quiet,
            )
            counts = ", ".join(f"{k} {v['frames']}" for k, v in recipe["counts"].items())
            print(f"wrote {args.out} ({args.format}; frames: {counts})")
        elif args.command == "backgrounds":
            paths = write_scenes(args.out, np.random.default_rng(args.seed))
            print(f"wrote {len(paths)} scenes to {args.out}")
        elif args.command == "show":
            ds = load_dataset(args.data, args.split)
            label = f"{args.data} [{args.split}]"
            path = write_sheet(ds, args.trajectory, args.out, args.scale, label=label)
            print(f"wrote {path}")
        else:
            figures = run_bench(args.out, args.trajectories, args.seed, args.workers,
                                progress=not args.quiet)
            for name, step in figures["steps"].items():
                print(f"{name}: {step['seconds']} s, {step['frames_per_s']} frames/s")
            print(f"wrote {args.out}")
    except (ValueError, OSError) as exc:  # DatasetError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
