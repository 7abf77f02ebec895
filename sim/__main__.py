"""Command line: ``python -m sim {generate,show,backgrounds,bench} ...`` (``-h``: options)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from sim.backgrounds import DEFAULT_AMPLITUDE
from sim.bench import DEFAULT_OUT, run_bench
from sim.clutter import write_scenes
from sim.families import PRESETS, Family, override
from sim.generate import FORMATS, generate
from sim.geometry import SIGMA
from sim.seqcsist_io import load_dataset
from sim.sheet import write_sheet
from sim.trajectory import LAYOUTS


def _float_range(text: str) -> tuple[float, float]:
    """Parse "80-250" (or "0.5") into (low, high) floats."""
    lo, sep, hi = text.partition("-") if not text.startswith("-") else (text, "", "")
    try:
        low, high = float(lo), float(hi) if sep else float(lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range like 80-250") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= low <= high")
    return low, high


def _mixture(text: str) -> tuple[Family, ...]:
    """Parse "paper:1,realistic:2" into families (preset name: weight)."""
    families = []
    for item in text.split(","):
        name, _, weight = item.partition(":")
        if name not in PRESETS or len(PRESETS[name]) != 1:
            single = [k for k, v in PRESETS.items() if len(v) == 1]
            raise argparse.ArgumentTypeError(f"{name!r} is not one of the presets {single}")
        try:
            families.append(dataclasses.replace(PRESETS[name][0], weight=float(weight or 1)))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: {exc}") from None
    return tuple(families)


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
    recipe = gen.add_mutually_exclusive_group()
    recipe.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                        help="scene family (docs/scenes.md): paper (default; SeqCSIST's rules), "
                             "csist100k, realistic, single or mixture")
    recipe.add_argument("--mix", type=_mixture, metavar="PRESET:WEIGHT,...",
                        help="a mixture of presets with weights, e.g. paper:1,realistic:2")
    gen.add_argument("--psf", type=float, default=SIGMA, metavar="SIGMA",
                     help="PSF std in pixels, written into every annotation (default 0.5)")
    gen.add_argument("--layout", choices=LAYOUTS, help="override the preset's layout")
    gen.add_argument("--targets", type=_target_range,
                     help="targets per trajectory, e.g. 2-4 (the paper's) or 1-8")
    gen.add_argument("--brightness", type=_float_range, metavar="LO-HI",
                     help="per-target brightness range in grey levels, e.g. 80-250")
    gen.add_argument("--brightness-change", type=float, metavar="RATE",
                     help="largest relative brightness change per frame (0: constant)")
    gen.add_argument("--speed", type=_float_range, metavar="LO-HI",
                     help="random/pixel layouts: group speed range in px/frame")
    gen.add_argument("--target-drift", type=float, metavar="PX",
                     help="random layout: largest per-target drift speed in px/frame")
    gen.add_argument("--radius", type=_float_range, metavar="LO-HI",
                     help="random layout: disk radius range in px")
    gen.add_argument("--separation", type=_float_range, metavar="LO-HI",
                     help="random layout: pairwise minimum separation range in px")
    gen.add_argument("--separation-ru", type=float, metavar="RU",
                     help="pixel layout: pairwise minimum separation in Rayleigh units (2 sigma)")
    gen.add_argument("--noise", type=float, default=0.0,
                     help="additive Gaussian noise std in grey levels (default 0)")
    gen.add_argument("--gain", type=float, default=0.0,
                     help="shot noise: grey levels per photo-electron (default 0: none)")
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


def _families(args: argparse.Namespace) -> tuple[Family, ...]:
    """The preset's (or the mixture's) families with the explicit options applied to each."""
    low, high = args.targets if args.targets else (None, None)
    return override(
        args.mix or PRESETS[args.preset], layout=args.layout, min_targets=low,
        max_targets=high, brightness=args.brightness,
        brightness_change=args.brightness_change, speed=args.speed,
        target_drift=args.target_drift, radius=args.radius, separation=args.separation,
        separation_ru=args.separation_ru,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            recipe = generate(
                args.out, args.trajectories, args.seed, fmt=args.format,
                rules=_families(args), noise_sigma=args.noise, backgrounds=args.backgrounds,
                background_amplitude=args.background_amplitude, workers=args.workers,
                progress=not args.quiet, sigma=args.psf, gain=args.gain,
                preset=None if args.mix else args.preset,
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
