"""Replica benchmark: ``python -m pipeline replicabench [--out benchmarks/scale.json]``.

How unmixer throughput grows with ``replicas``: a chain of three processes — a source that
replays ``--frames`` distinct ``Windows`` messages of ``--groups`` groups (made once, before
the clock starts, by the simulator, detector and cropper of ``configs/live.yaml``), the
unmixer with 1 or 2 replicas (one torch thread each), and a sink that only counts — runs
lossless and unpaced, so the unmixer is the bottleneck and the rate is what it sustains.
Rate = messages per second at the sink over the steady state (the first 10 messages left
out). Repeats are interleaved (R=1, R=2, R=1, …) and the median is reported, with the
speed-up of 2 replicas over 1 and the unmixer's own time per message.

The projection to more cores is arithmetic, not a measurement: R replicas on R free cores
give at most R × the one-replica rate, and a link costs what ``python -m pipeline
linkbench`` measured (the ``links`` section of the same file), which bounds nothing below
~1000 messages/s. Results go to ``--out`` under the key ``replicas``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.machine import cpu_model
from pipeline.config import QueueConfig, RunConfig, StagePlan, load
from pipeline.run.report import write_section
from pipeline.run.runner import run_inline, run_processes
from stages.base import Source, Stage
from stages.messages import Windows

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "scale.json"
#: Messages left out at the start of every run (start-up, first-call costs).
WARM_UP = 10


@dataclasses.dataclass(frozen=True)
class WindowsReplayConfig:
    frames: int = 200
    groups: int = 6
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class _KeepConfig:
    kept: list  # the Windows messages, filled by the sink


class _Keep(Stage):
    """Inline sink appending the Windows messages it receives to its config's ``kept``."""

    Config = _KeepConfig
    INPUTS = ("windows",)

    def process(self, msg: Windows) -> tuple:
        self.config.kept.append(msg)
        return ()


def make_windows(frames: int, groups: int, seed: int) -> list[Windows]:
    """The cropper's Windows messages of ``frames`` simulated frames (the live chain's
    simulator, detector and cropper, run inline)."""
    config, plans = load(REPO / "configs" / "live.yaml", [
        "run.mode=inline", f"run.frames={frames}", "run.rate_hz=null",
        f"stages.source.groups={groups}", f"stages.source.seed={seed}"])
    chain = [p for p in plans if p.name in ("source", "detector", "cropper")]
    keep = _KeepConfig(kept=[])
    chain.append(StagePlan("keep", "keep", _Keep, keep, ("windows",), None, QueueConfig()))
    run_inline(chain, config.run)
    return keep.kept


class WindowsReplay(Source):
    """Replays the Windows messages of :func:`make_windows`, made in ``start()``."""

    Config = WindowsReplayConfig
    OUTPUT = "windows"

    def start(self) -> None:
        self.messages = make_windows(self.config.frames, self.config.groups, self.config.seed)

    def __iter__(self) -> Iterator[Windows]:
        return iter(self.messages)


class Arrivals(Stage):
    """Sink: the arrival time of every message; its summary is the steady-state rate."""

    INPUTS = ("maps",)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.times: list[float] = []

    def process(self, msg: Any) -> tuple:
        self.times.append(time.perf_counter())
        return ()

    def summary(self) -> dict[str, Any]:
        steady = self.times[WARM_UP:]
        rate = ((len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else None)
        return {"messages": len(self.times), "rate": rate}


def one_run(model: str, replicas: int, frames: int, groups: int) -> dict[str, Any]:
    """One lossless, unpaced run; returns the sink's rate and the unmixers' p50 (ms)."""
    from stages.unmixer import Unmixer, UnmixerConfig

    lossless = QueueConfig(policy="block", hwm=4)
    unmix = UnmixerConfig(model=model, threads=1)
    chain = [
        StagePlan("source", "windows_replay", WindowsReplay,
                  WindowsReplayConfig(frames, groups), (), "windows", lossless),
        StagePlan("unmixer", "unmixer", Unmixer, unmix, ("windows",), "maps", lossless,
                  replicas=replicas),
        StagePlan("sink", "arrivals", Arrivals, None, ("maps",), None, lossless),
    ]
    report = run_processes(chain, RunConfig(mode="processes"))
    if report["error"]:
        raise RuntimeError(report["error"])
    names = ["unmixer"] if replicas == 1 else [f"unmixer.{k}" for k in range(replicas)]
    return {"rate": report["scores"]["sink"]["rate"],
            "messages": report["scores"]["sink"]["messages"],
            "unmixer_p50_ms": statistics.median(report["stages"][n]["p50_ms"] for n in names)}


def bench(models: list[str], frames: int, groups: int, repeats: int) -> dict[str, Any]:
    """Median rate per (model, replicas), interleaved repeats, and the speed-ups."""
    out: dict[str, Any] = {}
    for model in models:
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(repeats):
            for replicas in (1, 2):
                runs[replicas].append(one_run(model, replicas, frames, groups))
                print(f"{model:10s} replicas {replicas}: {runs[replicas][-1]['rate']:.1f} "
                      f"messages/s", flush=True)
        rows = {f"replicas_{r}": {
            "messages_per_s": statistics.median(x["rate"] for x in v),
            "samples": [round(x["rate"], 2) for x in v],
            "unmixer_p50_ms": statistics.median(x["unmixer_p50_ms"] for x in v),
        } for r, v in runs.items()}
        one = rows["replicas_1"]["messages_per_s"]
        rows["speedup_2_over_1"] = rows["replicas_2"]["messages_per_s"] / one
        rows["projection"] = {f"{r}_replicas_on_{r}_free_cores_at_most": r * one
                              for r in (2, 4, 8)}
        out[model] = rows
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file (key 'replicas' updated)")
    p.add_argument("--models", default="fastunmix,derefnet", help="unmixer models to run")
    p.add_argument("--frames", type=int, default=200, help="Windows messages per run")
    p.add_argument("--groups", type=int, default=6, help="groups (windows per message)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats per setting")


def main(args: argparse.Namespace) -> int:
    import torch

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = {
        "command": f"python -m pipeline replicabench --models {','.join(models)} --frames "
                   f"{args.frames} --groups {args.groups} --repeats {args.repeats}",
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "load_average_before": list(os.getloadavg())},
        "models": bench(models, args.frames, args.groups, args.repeats),
    }
    result["machine"]["load_average_after"] = list(os.getloadavg())
    out = write_section(args.out, "replicas", result)
    for model, rows in result["models"].items():
        print(f"{model}: 1 replica {rows['replicas_1']['messages_per_s']:.1f}/s, 2 replicas "
              f"{rows['replicas_2']['messages_per_s']:.1f}/s: x{rows['speedup_2_over_1']:.2f}")
    print(f"written to {out}")
    return 0
