"""Command line of the pipeline.

::

    python -m pipeline run CONFIG [--frames N] [--record FILE] [--publish ENDPOINT] ...
    python -m pipeline validate CONFIG [--links]
    python -m pipeline stage NAME[,NAME...] --config CONFIG [--set KEY=VALUE ...]
    python -m pipeline replay SOURCE [--config CONFIG] [--rate R] [--loop] [--lossless] ...
    python -m pipeline subscribe ENDPOINT [--topic T] [--json] [--count N] [--timeout S]
    python -m pipeline keys DIR [--client NAME ...]
    python -m pipeline bench [--out FILE] [--frames N] [--repeats R]
    python -m pipeline fuzz --messages N [--out FILE]
    python -m pipeline soak --minutes M [--out FILE] [--sample-s S]
    python -m pipeline linkbench | replicabench [--out FILE]

Exit codes: 0 success (also after a SIGINT/SIGTERM that drained cleanly), 1 the run failed (a
stage raised or died, or the chain did not drain) or ``subscribe`` got fewer messages than
asked, 2 invalid config or arguments, 130 aborted by a second signal.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.attach.record import RecordingError
from pipeline.config import (
    ConfigError,
    apply_override,
    effective,
    load_raw,
    parse_override,
    validate,
)
from pipeline.replay.formats import FORMATS
from pipeline.run.report import write_report
from pipeline.run.runner import run

logger = logging.getLogger("pipeline")

#: Config used by ``replay`` when neither --config nor a recorded config is available.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "live.yaml"


def _comma_list(text: str, example: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"give at least one, e.g. {example}")
    return items


def _topics(text: str) -> tuple[str, ...]:
    return _comma_list(text, "frames,blobs")


def _instances(text: str) -> tuple[str, ...]:
    return _comma_list(text, "unmixer.0,unmixer.1")


def _rate(text: str) -> float:
    if text.strip().lower() == "max":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate must be a number or 'max', got {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"rate must be >= 0 (0 or 'max': as fast as "
                                         f"possible), got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Run the CSO unmixing chain (sim/replay source -> detector -> cropper -> "
                    "unmixer -> extractor -> tracker -> sinks) from one YAML config; record, "
                    "replay and attach to it.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="override a config value (YAML-parsed), e.g. run.frames=100 or "
                            "stages.detector.k=6; repeatable")

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=int, help="stop after N source messages (run.frames)")
        p.add_argument("--mode", choices=("inline", "processes"),
                       help="one process, or one process per stage (run.mode)")
        p.add_argument("--report", metavar="FILE", help="write the JSON run report (run.report)")
        p.add_argument("--publish", metavar="ENDPOINT",
                       help="publish every topic on this endpoint, e.g. tcp://127.0.0.1:5555 "
                            "(run.publish.endpoint)")

    run_p = sub.add_parser("run", help="run the chain")
    run_p.add_argument("config", help="pipeline YAML file, e.g. configs/live.yaml")
    overrides(run_p)
    run_options(run_p)
    run_p.add_argument("--record", metavar="FILE", help="record to an MCAP file (run.record.path)")
    run_p.add_argument("--record-topics", type=_topics, metavar="T1,T2",
                       help="topics to record (default: all)")

    stage_p = sub.add_parser(
        "stage", help="run stage instances of a chain on this host; the conductor is the "
                      "`run` command whose run.external names them")
    stage_p.add_argument("names", type=_instances, metavar="NAME[,NAME...]",
                         help="stage or instance names (unmixer, unmixer.1, _digest), or all")
    stage_p.add_argument("--config", required=True,
                         help="the chain's YAML, the same as the conductor's")
    overrides(stage_p)

    validate_p = sub.add_parser("validate", help="check a config and print it with all defaults")
    validate_p.add_argument("config", help="pipeline YAML file")
    validate_p.add_argument("--links", action="store_true",
                            help="print every link and endpoint of a multi-process run "
                                 "instead (for firewall rules across hosts)")
    overrides(validate_p)

    replay_p = sub.add_parser(
        "replay", help="feed a recording, image folder, npy/npz stack, video or SeqCSIST "
                       "dataset into the chain")
    replay_p.add_argument("source", help="an .mcap recording, an image folder (PNG/TIFF), a "
                                         ".npy/.npz (T,H,W) stack, a video file, or a SeqCSIST "
                                         "split/root/.npz")
    replay_p.add_argument("--config", help="pipeline YAML (default: the config stored in the "
                                           "recording, else configs/live.yaml)")
    overrides(replay_p)
    run_options(replay_p)
    replay_p.add_argument("--rate", type=_rate, default=1.0,
                          help="multiple of the recorded timing; 0 or 'max' = as fast as "
                               "possible (default 1)")
    replay_p.add_argument("--loop", action="store_true", help="repeat until stopped")
    replay_p.add_argument("--start", type=float, metavar="S",
                          help="start S seconds after the recording start")
    replay_p.add_argument("--end", type=float, metavar="S",
                          help="stop S seconds after the recording start")
    replay_p.add_argument("--topics", type=_topics, metavar="T1,T2",
                          help="recorded topics to replay (default frames); the chain starts "
                               "after the stages that produced them")
    replay_p.add_argument("--lossless", action="store_true",
                          help="every link lossless and rate max: reproduces the recorded "
                               "run's outputs_digest")
    replay_p.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                          help="source format (default: recognised from the path): "
                               + "; ".join(f"{k}: {f.what}" for k, f in FORMATS.items()))
    replay_p.add_argument("--fps", type=float,
                          help="frame rate of files without time (default 25; a video's own)")
    replay_p.add_argument("--key", help="array name in an .npz stack (default: frames, or its "
                                        "only 3-D array)")
    replay_p.add_argument("--split", help="split of a SeqCSIST dataset root (e.g. test)")

    sub_p = sub.add_parser("subscribe", help="attach to a running pipeline's tap and print "
                                             "its messages")
    sub_p.add_argument("endpoint", help="the pipeline's run.publish.endpoint")
    sub_p.add_argument("--topic", action="append", default=[],
                       help="topic to print (repeatable; default all)")
    sub_p.add_argument("--json", action="store_true", help="one JSON object per line")
    sub_p.add_argument("--count", type=int, help="exit after N messages")
    sub_p.add_argument("--timeout", type=float, metavar="S",
                       help="exit after S seconds without a message")
    sub_p.add_argument("--server-key", help="CURVE: the pipeline's public key (server.key)")
    sub_p.add_argument("--client-key", help="CURVE: this client's key pair (NAME.key_secret)")

    keys_p = sub.add_parser("keys", help="create CURVE keys: a server pair, client pairs and "
                                         "the allow-list folder")
    keys_p.add_argument("dir", help="folder to write the keys to")
    keys_p.add_argument("--client", action="append", default=[], metavar="NAME",
                        help="client to create (repeatable; default: one named 'client')")
    from pipeline.wire import fuzz

    fuzz.add_arguments(sub.add_parser(
        "fuzz", help="a seeded fuzz campaign against the message decoders (exit 1 if anything "
                     "but DecodeError escapes)"))
    from pipeline import soak

    soak.add_arguments(sub.add_parser(
        "soak", help="run the live chain for --minutes and sample every stage process's "
                     "memory, CPU and latency (writes benchmarks/soak.json)"))
    from pipeline import linkbench

    linkbench.add_arguments(sub.add_parser(
        "linkbench", help="one-way latency of a message over ipc, tcp and tcp across a network "
                          "namespace, and bytes per frame per link (writes "
                          "benchmarks/scale.json)"))
    from pipeline import replicabench

    replicabench.add_arguments(sub.add_parser(
        "replicabench", help="unmixer throughput with 1 and 2 replicas, lossless and unpaced "
                             "(writes the replicas section of benchmarks/scale.json)"))
    from pipeline import bench

    bench.add_arguments(sub.add_parser(
        "bench", help="frames/s and end-to-end latency of the chain, inline and one process "
                      "per stage, for 1/6/24 groups (writes benchmarks/pipeline.json)"))
    return parser


def _apply_run_options(raw: dict, args: argparse.Namespace) -> None:
    """The explicit run options of the command line, applied after ``--set``."""
    for key in ("frames", "mode", "report"):
        value = getattr(args, key, None)
        if value is not None:
            apply_override(raw, ["run", key], value)
    if getattr(args, "publish", None):
        apply_override(raw, ["run", "publish", "endpoint"], args.publish)
    if getattr(args, "record", None):
        apply_override(raw, ["run", "record", "path"], args.record)
    if getattr(args, "record_topics", None):
        apply_override(raw, ["run", "record", "topics"], list(args.record_topics))


def _ms(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f} ms"


def _rate_text(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def through_line(report: dict[str, Any]) -> str:
    """"N of M frames through (K dropped at <stage>, …) in S s: X frames/s in, Y out"."""
    drops = ", ".join(f"{n} dropped at {stage}" for stage, n in report["dropped_at"].items())
    out = report["frames_out"]
    head = (f"{out} of {report['frames_in']} frames through" if out is not None
            else f"{report['frames_in']} frames")
    rates = f"{_rate_text(report['fps'])} frames/s in" + (
        f", {_rate_text(report['fps_out'])} out" if out is not None else "")
    return f"{head}{f' ({drops})' if drops else ''} in {report['wall_s']:.2f} s: {rates}"


def _print_summary(report: dict[str, Any]) -> None:
    e2e = report["end_to_end"]
    print(f"{through_line(report)}; end-to-end p50 {_ms(e2e['p50_ms'])}, "
          f"p99 {_ms(e2e['p99_ms'])}")
    if report.get("cso_map") is not None:
        line = f"CSO-mAP (points, live) {100 * report['cso_map']:.2f}"
        if report.get("cso_map_end_to_end") is not None:
            line += (f"; end to end {100 * report['cso_map_end_to_end']:.2f} (every target of "
                     "every frame, lost frames included)")
        print(line)
    for name, s in report["stages"].items():
        print(f"  {name:12s} in {s['msgs_in']:6d} out {s['msgs_out']:6d}  p50 {_ms(s['p50_ms'])}"
              f"  p99 {_ms(s['p99_ms'])}  dropped {s['dropped']} gaps {s['seq_gaps']} "
              f"decode_errors {s['decode_errors']}")
    if report.get("outputs_digest"):
        outputs = report["outputs"]
        print(f"outputs_digest {report['outputs_digest']} ({outputs['frames']} frames, "
              + ", ".join(f"{n} {t}" for t, n in outputs["records"].items()) + ")")


def _execute(config: Any, plans: list, config_yaml: str = "") -> int:
    capacity = None
    if config.run.capacity_check:
        from pipeline.run.capacity import check

        capacity = check(plans, config.run)
        print(capacity["line"], flush=True)
    try:
        report = run(plans, config.run, config_yaml)
        if capacity is not None:
            report["capacity"] = capacity
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


def _replay(args: argparse.Namespace) -> int:
    from pipeline.attach.record import recording_info
    from pipeline.replay.formats import detect_format
    from pipeline.replay.plan import (
        ReplayOptions,
        for_replay,
        plan_replay,
        recorded_config,
    )

    if args.config:
        raw, where = load_raw(args.config), args.config
    else:
        stored = None
        fmt = detect_format(args.source) if args.format == "auto" else args.format
        if fmt == "mcap":
            stored = recording_info(args.source).config_yaml
        if stored:
            raw, where = recorded_config(stored), f"{args.source} (recorded config)"
        else:
            raw, where = load_raw(DEFAULT_CONFIG), str(DEFAULT_CONFIG)
        logger.info("replay config: %s", where)
    raw = for_replay(raw)
    for text in args.overrides:
        apply_override(raw, *parse_override(text))
    _apply_run_options(raw, args)
    options = ReplayOptions(
        format=args.format, topics=args.topics, rate=args.rate, loop=args.loop,
        start_s=args.start, end_s=args.end, fps=args.fps, key=args.key, split=args.split,
        lossless=args.lossless,
    )
    config, plans = plan_replay(args.source, raw, options, where)
    return _execute(config, plans)


def _links_table(config: Any, plans: list) -> str:
    """Every endpoint of a multi-process run: the conductor's, then one line per link."""
    from pipeline.run import compose, layout

    run = config.run
    plans = compose.add_services(plans, run)
    ipc_dir = Path(run.ipc_dir) if run.ipc_dir else Path("<temp dir>")
    lines = [f"control {layout.control_endpoint(run, ipc_dir)}  (the conductor binds)"]
    for (topic, producer, consumer), link in layout.plan_links(plans, run, ipc_dir).items():
        lines.append(f"{topic:8s} {producer} -> {consumer}  {link.endpoint}  ({link.policy}; "
                     f"{producer} binds)")
    return "\n".join(lines) + "\n"


def _keys(args: argparse.Namespace) -> int:
    from pipeline.wire.curve import create_keys

    paths = create_keys(args.dir, args.client or ("client",))
    print(f"server public key (give to clients): {paths['server_public']}")
    print(f"server key pair (run.curve.secret_key): {paths['server_secret']}")
    print(f"allow-list folder (run.curve.allowed): {paths['allowed']}")
    print(f"the chain's own key pair (run.chain_key; copy to every host of the chain, and "
          f"nowhere else): {paths['chain_secret']}")
    for name, path in paths.items():
        if name.startswith("client:"):
            print(f"client {name[7:]} key pair (give to that client only): {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code."""
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "bench":
        from pipeline.bench import main as bench_main

        return bench_main(args)
    if args.command == "replicabench":
        from pipeline.replicabench import main as replicabench_main

        return replicabench_main(args)
    if args.command == "linkbench":
        from pipeline.linkbench import main as linkbench_main

        return linkbench_main(args)
    if args.command == "soak":
        from pipeline.soak import main as soak_main

        return soak_main(args)
    if args.command == "fuzz":
        from pipeline.wire.fuzz import main as fuzz_main

        return fuzz_main(args)
    try:
        if args.command == "subscribe":
            from pipeline.subscribe import subscribe

            return subscribe(args.endpoint, args.topic, args.json, args.count, args.timeout,
                             args.server_key, args.client_key)
        if args.command == "keys":
            return _keys(args)
        if args.command == "replay":
            return _replay(args)
        raw = load_raw(args.config, args.overrides)
        if args.command == "stage":
            from pipeline.run import remote

            config, plans = validate(raw, args.config)
            return remote.serve(remote.stage_specs(plans, config.run, args.names))
        _apply_run_options(raw, args)
        config, plans = validate(raw, args.config)
        config_yaml = yaml.safe_dump(effective(config, plans), sort_keys=False)
        if args.command == "validate":
            print(_links_table(config, plans) if args.links else config_yaml, end="")
            return 0
        return _execute(config, plans, config_yaml)
    except (ConfigError, RecordingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
