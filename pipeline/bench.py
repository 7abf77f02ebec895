"""Pipeline benchmark: ``python -m pipeline bench [--out FILE] [--frames N] ...``.

End-to-end frames/s and latency of the live chain (the processing stages of
``configs/live.yaml``: simulator → detector → cropper → unmixer → extractor → tracker; its
sinks are left out) on 256×256 frames, for every combination of

- **mode**: ``inline`` (one process) and ``processes`` (one process per stage over ZeroMQ);
- **groups**: CSO groups in the scene (default 1, 6 and 24);
- **model** (``--models fastunmix,derefnet``): the unmixer's model, each with its shipped
  weights (default: the config's unmixer as it is);
- **replicas** (``--replicas 1,2``): unmixer processes sharing the stream
  (:mod:`pipeline.run.replicas`; processes mode only, default 1).

Each combination runs twice:

``max``
    unpaced, every link lossless: the **frames/s** the chain sustains (the source waits for the
    slowest stage);
``paced``
    the source paced at ``--rate`` (default 25 Hz, the sensor rate) with the config's queue
    policy: the **end-to-end latency** (p50/p99 of tracker exit minus source exit of the newest
    frame a result used, :mod:`pipeline.run.report`), the frames/s achieved and the frames
    **lost** (source frames without tracks at the end of the chain, whichever link dropped
    them). A chain that cannot keep up shows it here as losses or growing latency.

Latency as reported excludes the fixed window delay: the result for frame t needs frames up to
t + 2, so it leaves two frame periods (80 ms at 25 Hz) after frame t was captured;
``p99_from_middle_ms`` adds them.

Every variant runs ``--repeats`` times, interleaved (repeat 1 of every variant, then repeat
2, …) so that a change in machine load hits all variants alike; the table quotes the median
over repeats. Results and machine info go to ``--out`` (default ``benchmarks/pipeline.json``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.machine import cpu_model
from pipeline.config import ConfigError, apply_override, load_raw, validate
from pipeline.run.report import json_safe
from pipeline.run.runner import run as run_chain

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "live.yaml"
DEFAULT_OUT = REPO / "benchmarks" / "pipeline.json"
MODES = ("inline", "processes")
#: The goal of the live pipeline (issue 5): frames/s at 6 groups, p99 end-to-end latency.
GOAL = {"groups": 6, "fps": 25.0, "p99_ms": 200.0}
#: Window delay of the cropper in frames (a window is centred 2 frames back).
WINDOW_DELAY_FRAMES = 2


@dataclasses.dataclass(frozen=True)
class Variant:
    """One benchmarked setting: run ``mode`` with ``groups`` groups, ``paced`` or not, with
    the unmixer's ``model`` (None: as configured) in ``replicas`` processes."""

    mode: str
    groups: int
    paced: bool
    model: str | None = None
    replicas: int = 1

    @property
    def name(self) -> str:
        prefix = f"{self.model}/" if self.model else ""
        mode = self.mode if self.replicas == 1 else f"{self.mode}x{self.replicas}"
        return f"{prefix}{mode}/{self.groups}g/{'paced' if self.paced else 'max'}"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"modes must be among {MODES}, got {text!r}")
    return modes


def _names(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated model names, got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m pipeline bench``."""
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="pipeline YAML whose processing stages are benchmarked "
                        "(default configs/live.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as in `run` (repeatable)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="JSON results file (default benchmarks/pipeline.json)")
    p.add_argument("--frames", type=int, default=200, help="frames per run (default 200)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per variant; the table quotes the median (default 3)")
    p.add_argument("--groups", type=_int_list, default=(1, 6, 24), metavar="G1,G2",
                   help="CSO groups per frame (default 1,6,24)")
    p.add_argument("--modes", type=_modes, default=MODES, metavar="M1,M2",
                   help="inline and/or processes (default both)")
    p.add_argument("--rate", type=float, default=25.0,
                   help="source rate of the paced runs in Hz (default 25)")
    p.add_argument("--models", type=_names, default=(None,), metavar="M1,M2",
                   help="unmixer models to compare, each with its shipped weights "
                        "(default: the config's unmixer)")
    p.add_argument("--replicas", type=_int_list, default=(1,), metavar="R1,R2",
                   help="unmixer replicas to compare, processes mode only (default 1)")


def chain_config(raw: dict[str, Any], variant: Variant, frames: int, rate: float,
                 where: str) -> tuple[Any, list]:
    """The validated (config, plans) of one variant: the processing stages of ``raw`` (sinks
    left out), ``variant.groups`` groups, ``frames`` frames, lossless and unpaced unless
    ``variant.paced`` (then ``rate`` Hz and the config's own queue policy), and
    ``variant.model`` with its shipped weights as the unmixer when set."""
    _, plans = validate(raw, where)
    kept = {p.name for p in plans if p.output is not None}
    bench = copy.deepcopy(raw)
    bench["stages"] = [e for e in bench["stages"] if e.get("name") in kept]
    bench["run"] = {k: v for k, v in dict(bench.get("run") or {}).items()
                    if k not in ("record", "publish", "curve", "report")}
    source = plans[0].name
    for path, value in (
        (["run", "mode"], variant.mode),
        (["run", "frames"], frames),
        (["run", "rate_hz"], rate if variant.paced else None),
        (["stages", source, "groups"], variant.groups),
        (["stages", source, "frames"], 0),
    ):
        apply_override(bench, path, value)
    unmixer = next((p.name for p in plans if p.kind == "unmixer"), None)
    if (variant.model is not None or variant.replicas > 1) and unmixer is None:
        raise ConfigError(f"{where}: --models and --replicas need an unmixer stage")
    if variant.model is not None:
        apply_override(bench, ["stages", unmixer, "model"], variant.model)
        apply_override(bench, ["stages", unmixer, "weights"], None)
    if variant.replicas > 1:
        apply_override(bench, ["stages", unmixer, "replicas"], variant.replicas)
    if not variant.paced:
        apply_override(bench, ["run", "queue", "policy"], "block")
        for entry in bench["stages"]:
            entry.pop("queue", None)
    return validate(bench, f"{where} (bench {variant.name})")


def run_variant(raw: dict[str, Any], variant: Variant, frames: int, rate: float,
                where: str) -> dict[str, Any]:
    """Run one variant once; returns its figures (see :func:`summarise` for the keys)."""
    config, plans = chain_config(raw, variant, frames, rate, where)
    started = time.monotonic()
    report = run_chain(plans, config.run)
    stages = report["stages"]
    results = stages[report["end_to_end"]["at"]]["msgs_out"]
    return {
        "ok": report["ok"],
        "error": report["error"],
        "frames": report["frames"],
        "results": results,
        "lost": max(0, report["frames"] - WINDOW_DELAY_FRAMES - results),
        "fps": report["fps"],
        "p50_ms": report["end_to_end"]["p50_ms"],
        "p99_ms": report["end_to_end"]["p99_ms"],
        "dropped": sum(s["dropped"] for s in stages.values()),
        "seq_gaps": sum(s["seq_gaps"] for s in stages.values()),
        "decode_errors": sum(s["decode_errors"] for s in stages.values()),
        "stage_p50_ms": {n: s["p50_ms"] for n, s in stages.items() if not n.startswith("_")},
        "stage_p99_ms": {n: s["p99_ms"] for n, s in stages.items() if not n.startswith("_")},
        "elapsed_s": time.monotonic() - started,
    }


def _median(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and v == v]  # v == v drops NaN
    return statistics.median(finite) if finite else None


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median over the repeats of one variant.

    Returns
    -------
    dict
        ``fps``, ``p50_ms``, ``p99_ms`` (medians), ``fps_range`` [min, max], ``lost``,
        ``dropped`` and ``seq_gaps`` (totals), ``stage_p50_ms`` and ``stage_p99_ms`` (median
        per stage), ``repeats``.
    """
    fps = [r["fps"] for r in runs]
    stages = runs[0]["stage_p50_ms"].keys()
    return {
        "fps": _median(fps),
        "fps_range": [min(fps), max(fps)],
        "p50_ms": _median([r["p50_ms"] for r in runs]),
        "p99_ms": _median([r["p99_ms"] for r in runs]),
        "lost": sum(r["lost"] for r in runs),
        "dropped": sum(r["dropped"] for r in runs),
        "seq_gaps": sum(r["seq_gaps"] for r in runs),
        "stage_p50_ms": {s: _median([r["stage_p50_ms"][s] for r in runs]) for s in stages},
        "stage_p99_ms": {s: _median([r["stage_p99_ms"][s] for r in runs]) for s in stages},
        "repeats": len(runs),
    }


def table_rows(results: dict[str, dict[str, Any]], rate: float) -> list[dict[str, Any]]:
    """One row per (model, mode, replicas, groups): max fps, and the paced run's fps,
    latency and losses (``model`` None: the config's unmixer)."""
    rows = []
    keys = sorted({(v.get("model"), v["mode"], v.get("replicas", 1), v["groups"])
                   for v in results.values()},
                  key=lambda k: (k[0] or "", MODES.index(k[1]), k[2], k[3]))
    delay_ms = WINDOW_DELAY_FRAMES * 1e3 / rate
    for model, mode, replicas, groups in keys:
        top = results.get(Variant(mode, groups, False, model, replicas).name, {})
        paced = results.get(Variant(mode, groups, True, model, replicas).name, {})
        p99 = paced.get("p99_ms")
        rows.append({
            "model": model, "mode": mode, "replicas": replicas, "groups": groups,
            "max_fps": top.get("fps"),
            "paced_fps": paced.get("fps"),
            "p50_ms": paced.get("p50_ms"),
            "p99_ms": p99,
            "p99_from_middle_ms": None if p99 is None else p99 + delay_ms,
            "lost": paced.get("lost"),
        })
    return rows


def goal_check(rows: Sequence[dict[str, Any]], rate: float) -> dict[str, Any]:
    """Whether each mode (``model/mode`` with ``--models``) meets :data:`GOAL` at its group
    count: max frames/s ≥ goal fps, the paced run keeps the rate (≥ 95 % of it, no frame
    lost) and its p99 ≤ goal p99."""
    out: dict[str, Any] = {**GOAL, "rate_hz": rate, "met": {}}
    for row in rows:
        if row["groups"] != GOAL["groups"] or None in (row["max_fps"], row["p99_ms"]):
            continue
        mode = row["mode"] if row.get("replicas", 1) == 1 else f"{row['mode']}x{row['replicas']}"
        key = f"{row['model']}/{mode}" if row.get("model") else mode
        out["met"][key] = bool(
            row["max_fps"] >= GOAL["fps"]
            and row["paced_fps"] >= 0.95 * min(rate, GOAL["fps"])
            and row["lost"] == 0
            and row["p99_ms"] <= GOAL["p99_ms"]
        )
    return out


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """CPU (model, torch CPU capability, native bf16, fp32 matmul peak on 1 and 2 threads at
    the start), core counts, load, library versions and the thread environment."""
    import cv2
    import numpy as np
    import torch
    import zmq

    from models.bench import matmul_peak_gflops
    from models.precision import bf16_native

    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": bf16_native(),
        "peak_gflops_threads1": matmul_peak_gflops(1),
        "peak_gflops_threads2": matmul_peak_gflops(2),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "git_commit": _git_commit(),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: Sequence[dict[str, Any]], rate: float) -> str:
    """The rows as a Markdown table."""
    lines = [
        f"| model | mode | unmixer replicas | groups | max fps | paced fps ({rate:g} Hz) | "
        f"p50 ms | p99 ms | p99 from middle frame ms | lost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.get('model') or 'as configured'} | {r['mode']} | {r.get('replicas', 1)} | "
            f"{r['groups']} | "
            f"{_fmt(r['max_fps'])} | {_fmt(r['paced_fps'])} | "
            f"{_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['p99_from_middle_ms'])} | "
            f"{'-' if r['lost'] is None else r['lost']} |"
        )
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    """The ``python -m pipeline bench`` command that reproduces ``args``."""
    parts = ["python -m pipeline bench", f"--frames {args.frames}", f"--repeats {args.repeats}",
             f"--groups {','.join(map(str, args.groups))}", f"--modes {','.join(args.modes)}",
             f"--rate {args.rate:g}"]
    if args.models != (None,):
        parts.append(f"--models {','.join(args.models)}")
    if args.replicas != (1,):
        parts.append(f"--replicas {','.join(map(str, args.replicas))}")
    if Path(args.config).resolve() != DEFAULT_CONFIG:
        parts.append(f"--config {args.config}")
    parts += [f"--set {o}" for o in args.overrides]
    return " ".join(parts)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every variant ``args.repeats`` times (interleaved); returns the results document."""
    raw = load_raw(args.config, args.overrides)
    variants = [Variant(m, g, paced, model, r) for model in args.models for m in args.modes
                for r in args.replicas for g in args.groups for paced in (False, True)
                if r == 1 or m == "processes"]  # (inline runs build one instance)
    if not variants:
        raise ConfigError("--replicas above 1 needs --modes processes")
    for v in variants:  # fail on a bad config before the first run, not after minutes
        chain_config(raw, v, args.frames, args.rate, args.config)
    machine = machine_info()
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for repeat in range(args.repeats):
        for v in variants:
            result = run_variant(raw, v, args.frames, args.rate, args.config)
            runs[v.name].append(result)
            print(f"[{repeat + 1}/{args.repeats}] {v.name:24s} {_fmt(result['fps'])} fps  "
                  f"p50 {_fmt(result['p50_ms'])} ms  p99 {_fmt(result['p99_ms'])} ms  "
                  f"lost {result['lost']}", file=sys.stderr, flush=True)
            if not result["ok"]:
                raise RuntimeError(f"bench variant {v.name} failed: {result['error']}")
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results = {
        v.name: {"model": v.model, "mode": v.mode, "replicas": v.replicas, "groups": v.groups,
                 "paced": v.paced, **summarise(runs[v.name]), "runs": runs[v.name]}
        for v in variants
    }
    rows = table_rows(results, args.rate)
    unmixers = {}  # model (or "as configured") -> the unmixer's config
    for model in args.models:
        _, plans = chain_config(raw, Variant(args.modes[0], args.groups[0], False, model),
                                args.frames, args.rate, args.config)
        unmixer = next((p.config for p in plans if p.kind == "unmixer"), None)
        unmixers[model or "as configured"] = (dataclasses.asdict(unmixer)
                                              if unmixer is not None else None)
    return {
        "command": command_line(args),
        "machine": machine,
        "settings": {
            "config": str(args.config), "overrides": list(args.overrides),
            "frames": args.frames, "repeats": args.repeats, "rate_hz": args.rate,
            "frame_size": [plans[0].config.height, plans[0].config.width],
            "chain": [p.name for p in plans],
            "unmixers": unmixers,
        },
        "goal": goal_check(rows, args.rate),
        "table": rows,
        "results": results,
    }


def main(args: argparse.Namespace) -> int:
    """Entry point of ``python -m pipeline bench``: run, print the table, write ``--out``."""
    if args.frames < 10 or args.repeats < 1 or args.rate <= 0:
        print("error: bench needs --frames >= 10, --repeats >= 1 and --rate > 0",
              file=sys.stderr)
        return 2
    try:
        doc = benchmark(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(doc["table"], args.rate))
    met = doc["goal"]["met"]
    if met:
        print(f"goal ({GOAL['fps']:g} frames/s at {GOAL['groups']} groups, p99 <= "
              f"{GOAL['p99_ms']:g} ms): " + ", ".join(f"{m} {'met' if ok else 'NOT met'}"
                                                      for m, ok in met.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(doc), indent=2, sort_keys=True) + "\n")
    print(f"results written to {out}")
    return 0
