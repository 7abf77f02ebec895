"""Command line: ``python -m pipeline run CONFIG`` and ``python -m pipeline validate CONFIG``.

Exit codes: 0 success (also after a SIGINT/SIGTERM that drained cleanly), 1 the run failed (a
stage raised or died, or the chain did not drain), 2 invalid config or arguments, 130 aborted
by a second signal.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from pipeline.config import ConfigError, apply_override, effective, load_raw, validate
from pipeline.report import write_report
from pipeline.runner import run

logger = logging.getLogger("pipeline")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Run the CSO unmixing chain (sim/replay source -> detector -> cropper -> "
                    "unmixer -> extractor -> tracker -> sinks) from one YAML config.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="pipeline YAML file, e.g. configs/live.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="override a config value (YAML-parsed), e.g. run.frames=100 or "
                            "stages.detector.k=6; repeatable")

    run_p = sub.add_parser("run", help="run the chain")
    common(run_p)
    run_p.add_argument("--frames", type=int, help="stop after N source frames (run.frames)")
    run_p.add_argument("--mode", choices=("inline", "processes"),
                       help="one process, or one process per stage (run.mode)")
    run_p.add_argument("--report", metavar="FILE", help="write the JSON run report (run.report)")
    validate_p = sub.add_parser("validate", help="check a config and print it with all defaults")
    common(validate_p)
    return parser


def _load(args: argparse.Namespace) -> tuple[Any, list]:
    """Read the config, apply ``--set`` and then the explicit run options, validate."""
    raw = load_raw(args.config, args.overrides)
    for key in ("frames", "mode", "report"):
        value = getattr(args, key, None)
        if value is not None:
            apply_override(raw, ["run", key], value)
    return validate(raw, args.config)


def _ms(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f} ms"


def _print_summary(report: dict[str, Any]) -> None:
    e2e = report["end_to_end"]
    print(f"{report['frames']} frames in {report['wall_s']:.2f} s ({report['fps']:.1f} fps), "
          f"end-to-end p50 {_ms(e2e['p50_ms'])}, p99 {_ms(e2e['p99_ms'])}")
    for name, s in report["stages"].items():
        print(f"  {name:12s} in {s['msgs_in']:6d} out {s['msgs_out']:6d}  p50 {_ms(s['p50_ms'])}"
              f"  p99 {_ms(s['p99_ms'])}  dropped {s['dropped']} gaps {s['seq_gaps']} "
              f"decode_errors {s['decode_errors']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code."""
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, plans = _load(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(yaml.safe_dump(effective(config, plans), sort_keys=False), end="")
        return 0
    try:
        report = run(plans, config.run)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(report)
    if config.run.report:
        print(f"report written to {write_report(report, config.run.report)}")
    if report["error"]:
        print(f"error: {report['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
