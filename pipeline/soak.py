"""Soak test: ``python -m pipeline soak --minutes M [--config C] [--out FILE] [--set K=V ...]``.

Runs the live chain (default ``configs/live.yaml``, processes mode, paced at its
``run.rate_hz``) for M minutes and watches it from outside:

- **memory and CPU**: every ``--sample-s`` seconds, the resident set size (``VmRSS`` of
  ``/proc/PID/status``, MB) and the CPU time (``utime + stime`` of ``/proc/PID/stat``) of every
  stage process and of the runner;
- **latency**: a subscriber on the run's tap (an ipc endpoint made for the soak, unless
  ``run.publish`` is set) receives every ``tracks`` message and takes its age inside the chain,
  ``max(stamps) - min(stamps)`` (the tracker's exit minus the source's exit of the newest frame
  the result used, the report's end-to-end latency), as p50/p99 per sample interval;
- **losses**: ``tracks`` messages received per interval and the seqs the tap announced as
  skipped inside the chain (``csist.Skipped``); at the end, the run report's drops per stage.

Figures after a warm-up (``--warmup-minutes``, default a third of the run, at most 10 min: the
scoring stage pools the last ``map_window`` frames, so its memory grows until that window is
full) decide the goals:

- RSS growth per process (last sample minus the first after warm-up) <= ``RSS_GROWTH_MB``;
- latency flat: the median p99 of the last third of the intervals after warm-up <=
  ``P99_DRIFT`` × that of the first third (+ 1 ms for timer noise);
- no message dropped anywhere in the chain (the report's drops over the whole run; the seqs the
  tap announced skipped after warm-up are given beside them).

The document (``--out``, default ``benchmarks/soak.json``) holds the machine, the command, every
sample, the per-process summary and the goals; the exit code is 0 when the run itself succeeded
(goals missed are reported, not an error), 1 when it failed, 2 for a bad config.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from pipeline.bench import machine_info
from pipeline.config import ConfigError, apply_override, load_raw, validate
from pipeline.run.report import json_safe
from pipeline.run.runner import run as run_chain
from pipeline.wire.codec import DEFAULT_LIMITS, DecodeError, decode
from stages.messages import EndOfStream, Skipped, Stats

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "live.yaml"
DEFAULT_OUT = REPO / "benchmarks" / "soak.json"
#: Goals: RSS growth per process after warm-up (MB) and the allowed p99 drift (ratio).
RSS_GROWTH_MB = 5.0
P99_DRIFT = 1.25
#: The topic whose latency is watched.
TOPIC = "tracks"
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m pipeline soak``."""
    p.add_argument("--minutes", type=float, required=True, help="how long to run")
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="pipeline YAML (default configs/live.yaml); run in processes mode")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. stages.source.config.groups=6")
    p.add_argument("--sample-s", type=float, default=10.0,
                   help="seconds between samples (default 10)")
    p.add_argument("--warmup-minutes", type=float,
                   help="minutes left out of the goals (default: a third of the run, <= 10)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file to write")


def read_proc(pid: int) -> tuple[float, float] | None:
    """(RSS in MB, CPU seconds used) of process ``pid``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rss_kb = next((int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:")), 0)
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime, stime
    return rss_kb / 1024.0, cpu_s


class _Latency:
    """The tap subscriber: ages and counts of ``tracks`` messages, drained per interval."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.lock = threading.Lock()
        self.ages_ms: list[float] = []
        self.received = self.skipped = self.decode_errors = 0
        self.first_t: float | None = None  # monotonic time of the first message
        self.ended = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="soak-tap", daemon=True)

    def _loop(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, DEFAULT_LIMITS.max_total_bytes)
            sock.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
            sock.connect(self.endpoint)
            while not self.stop.is_set() and not self.ended.is_set():
                if sock.poll(100, zmq.POLLIN):
                    self._take(sock.recv_multipart())
        finally:
            sock.close(linger=0)
            ctx.term()

    def _take(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except DecodeError:
            with self.lock:
                self.decode_errors += 1
            return
        if bytes(frames[0]).decode() != TOPIC or isinstance(msg, Stats):
            return
        if isinstance(msg, EndOfStream):
            self.ended.set()
            return
        with self.lock:
            if isinstance(msg, Skipped):
                self.skipped += msg.last - msg.seq + 1
            else:
                self.received += 1
                if self.first_t is None:
                    self.first_t = time.monotonic()
                if msg.stamps:
                    stamps = msg.stamps.values()
                    self.ages_ms.append((max(stamps) - min(stamps)) / 1e6)

    def drain(self) -> dict[str, Any]:
        """This interval's count, skipped seqs and age percentiles; resets them."""
        with self.lock:
            ages, self.ages_ms = self.ages_ms, []
            out = {"received": self.received, "skipped": self.skipped}
            self.received = self.skipped = 0
        p50, p99 = (np.percentile(ages, [50, 99]).tolist() if ages else (None, None))
        return {**out, "p50_ms": p50, "p99_ms": p99}


def _sample(pids: Mapping[str, int], last_cpu: dict[str, float], last_t: float,
            latency: _Latency) -> dict[str, Any]:
    """One sample; ``t_s`` counts from the first ``tracks`` message (negative before it)."""
    now = time.monotonic()
    procs = {}
    for name, pid in pids.items():
        got = read_proc(pid)
        if got is None:
            continue
        rss, cpu = got
        used = cpu - last_cpu.get(name, cpu)
        last_cpu[name] = cpu
        procs[name] = {"rss_mb": round(rss, 2), "cpu": round(used / max(now - last_t, 1e-9), 3)}
    start = latency.first_t if latency.first_t is not None else now
    return {"t_s": round(now - start, 2), "procs": procs, TOPIC: latency.drain()}


def summarise(samples: Sequence[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Per process RSS figures and the latency drift after ``warmup_s``, and the goals."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    procs: dict[str, Any] = {}
    for name in sorted({n for s in after for n in s["procs"]}):
        series = [(s["t_s"], s["procs"][name]["rss_mb"], s["procs"][name]["cpu"])
                  for s in after if name in s["procs"]]
        t, rss, cpu = (np.array(c, dtype=float) for c in zip(*series, strict=True))
        slope = float(np.polyfit(t, rss, 1)[0] * 3600) if len(t) >= 2 else None
        procs[name] = {"rss_mb_after_warmup": float(rss[0]), "rss_mb_end": float(rss[-1]),
                       "rss_mb_max": float(rss.max()), "rss_growth_mb": float(rss[-1] - rss[0]),
                       "rss_slope_mb_per_h": slope, "cpu_median": float(np.median(cpu))}
    p99 = [s[TOPIC]["p99_ms"] for s in after if s[TOPIC]["p99_ms"] is not None]
    third = len(p99) // 3
    first = float(np.median(p99[:third])) if third else None
    last = float(np.median(p99[-third:])) if third else None
    latency = {"p99_first_third_ms": first, "p99_last_third_ms": last,
               "p99_max_ms": max(p99, default=None),
               "intervals": len(p99)}
    latency["skipped_after_warmup"] = sum(s[TOPIC]["skipped"] for s in after)
    growth = {n: p["rss_growth_mb"] for n, p in procs.items()}
    goals = {
        "rss_growth_mb_max": max(growth.values(), default=None),
        "rss_growth_ok": bool(growth) and all(g <= RSS_GROWTH_MB for g in growth.values()),
        "p99_flat": (first is not None and last is not None
                     and last <= P99_DRIFT * first + 1.0),
    }
    return {"procs": procs, "latency": latency, "goals": goals}


def _chain(args: argparse.Namespace, publish_dir: str) -> tuple[Any, list, str, int]:
    raw = load_raw(args.config, args.overrides)
    apply_override(raw, ["run", "mode"], "processes")
    rate = (raw.get("run") or {}).get("rate_hz")
    if not rate:
        raise ConfigError(f"{args.config}: a soak needs a paced source (run.rate_hz > 0)")
    frames = max(1, math.ceil(args.minutes * 60 * float(rate)))
    apply_override(raw, ["run", "frames"], frames)
    publish = (raw.get("run") or {}).get("publish")
    if publish is None:
        publish = {"endpoint": f"ipc://{publish_dir}/tap"}
    publish = {**publish, "wait_subscribers": max(1, int(publish.get("wait_subscribers", 0)))}
    apply_override(raw, ["run", "publish"], publish)
    config, plans = validate(raw, args.config)
    return config, plans, publish["endpoint"], frames


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; returns the results document (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="csist-soak-") as publish_dir:
        config, plans, endpoint, frames = _chain(args, publish_dir)
        latency = _Latency(endpoint)
        pids: dict[str, int] = {"runner": os.getpid()}
        done = threading.Event()
        samples: list[dict[str, Any]] = []

        def sampler() -> None:
            last_cpu: dict[str, float] = {}
            last_t = time.monotonic()
            _sample(pids, last_cpu, last_t, latency)  # CPU baselines
            while not done.wait(args.sample_s) and not latency.ended.is_set():
                samples.append(_sample(pids, last_cpu, last_t, latency))
                last_t = time.monotonic()
                s = samples[-1]
                rss = " ".join(f"{n} {p['rss_mb']:.0f}" for n, p in s["procs"].items())
                p99 = s[TOPIC]["p99_ms"]
                print(f"[soak {s['t_s']:7.0f} s] {TOPIC} {s[TOPIC]['received']} p99 "
                      f"{'-' if p99 is None else f'{p99:.1f}'} ms; RSS MB: {rss}",
                      file=sys.stderr, flush=True)

        def on_spawn(stage_pids: dict[str, int]) -> None:
            pids.update(stage_pids)
            latency.thread.start()
            threading.Thread(target=sampler, name="soak-sampler", daemon=True).start()

        try:
            report = run_chain(plans, config.run, on_spawn=on_spawn)
        finally:
            done.set()
            latency.stop.set()
            if latency.thread.is_alive():
                latency.thread.join(5.0)
    warmup_min = (args.warmup_minutes if args.warmup_minutes is not None
                  else min(10.0, args.minutes / 3))
    summary = summarise(samples, warmup_min * 60)
    dropped = sum(report["dropped_at"].values())
    summary["goals"]["dropped"] = dropped
    summary["goals"]["no_drops"] = dropped == 0
    return {
        "command": _command(args),
        "machine": machine_info(),
        "settings": {"config": str(args.config), "overrides": list(args.overrides),
                     "minutes": args.minutes, "frames": frames, "rate_hz": config.run.rate_hz,
                     "sample_s": args.sample_s, "warmup_minutes": warmup_min,
                     "goals": {"rss_growth_mb": RSS_GROWTH_MB, "p99_drift": P99_DRIFT}},
        "run": {k: report.get(k) for k in ("frames_in", "frames_out", "fps", "wall_s",
                                           "dropped_at", "end_to_end", "error",
                                           "cso_map", "cso_map_end_to_end")},
        "tap": {"decode_errors": latency.decode_errors, "ended": latency.ended.is_set()},
        **summary,
        "samples": samples,
    }


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m pipeline soak", f"--minutes {args.minutes:g}",
             f"--sample-s {args.sample_s:g}"]
    if args.warmup_minutes is not None:
        parts.append(f"--warmup-minutes {args.warmup_minutes:g}")
    if Path(args.config).resolve() != DEFAULT_CONFIG:
        parts.append(f"--config {args.config}")
    parts += [f"--set {o}" for o in args.overrides]
    return " ".join(parts)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(args: argparse.Namespace) -> int:
    """Entry point of ``python -m pipeline soak``."""
    if args.minutes <= 0 or args.sample_s <= 0:
        print("error: soak needs --minutes > 0 and --sample-s > 0", file=sys.stderr)
        return 2
    try:
        doc = soak(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(doc), indent=2, sort_keys=True) + "\n")
    goals = doc["goals"]
    lat = doc["latency"]
    print(f"soak {doc['run']['wall_s'] / 60:.1f} of {args.minutes:g} min: "
          f"{doc['run']['frames_out']} of {doc['run']['frames_in']} "
          f"frames through, {goals['dropped']} dropped; RSS growth after warm-up max "
          f"{_num(goals['rss_growth_mb_max'])} MB ({'ok' if goals['rss_growth_ok'] else 'NOT ok'}"
          f"); p99 {_num(lat['p99_first_third_ms'])} -> {_num(lat['p99_last_third_ms'])} ms "
          f"({'flat' if goals['p99_flat'] else 'NOT flat'}); written to {out}")
    if doc["run"]["error"]:
        print(f"error: {doc['run']['error']}", file=sys.stderr)
        return 1
    return 0
