"""Speed benchmark: ``python -m models bench --model NAME [--weights FILE] [--out FILE]``.

Measures windows/s at batch 1 and batch 64 and the latency per window on this machine's
CPU, for the plain model and for each optimisation that applies: thread count,
channels_last, bf16 autocast, torch.compile, and whole 20-frame sequences through
``forward_sequences`` (models that share per-frame features, such as DeRefNet, reuse them
across the overlapping windows of a track). Every figure is the
median of ``--repeats`` timed runs after a warm-up; all variants run side by side in one
process. Results go to a JSON file (default ``benchmarks/bench_<model>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from models.registry import get_model
from models.weights import WeightsError, load_model
from sim.geometry import PATCH, WINDOW


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation for torch.compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, WINDOW, PATCH, PATCH, generator=g) * 250, torch.full((batch,), 9)


def time_windows(model, batch: int, repeats: int, bf16: bool = False,
                 channels_last: bool = False) -> dict:
    """Median windows/s and ms per window of ``model`` on random windows of ``batch``."""
    windows, index = _inputs(batch)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())

    def run():
        with torch.inference_mode(), autocast:
            model(windows, index)

    sec = _median_seconds(run, repeats)
    return {"batch": batch, "seconds": sec, "windows_per_s": batch / sec,
            "latency_ms_per_window": 1e3 * sec / batch}


def _sequencetime_windows(model, tracks: int, repeats: int):
    """Live-style reuse: each new frame's features computed once and shared by 5 windows.

    Measured as the steady-state cost of a 20-frame sequence per track (16 windows).
    """
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(tracks, 20, PATCH, PATCH, generator=g) * 250
    start = torch.zeros(tracks, dtype=torch.int64)

    def run():
        with torch.inference_mode():
            model.forward_sequences(frames, start)

    sec = _median_seconds(run, repeats)
    n = tracks * 16
    return {"batch": n, "seconds": sec, "windows_per_s": n / sec,
            "latency_ms_per_window": 1e3 * sec / n}


def benchmark(model_name: str, weights: str | None, repeats: int, compile_: bool) -> dict:
    try:
        model, meta = load_model(model_name, weights)
        weights_note = meta.get("sha256", "no weights needed")
    except WeightsError:
        model, weights_note = get_model(model_name).eval(), "untrained (speed only)"
    results: dict[str, dict] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (1, 64):
            results[f"fp32_threads{threads}_b{batch}"] = time_windows(model, batch, repeats)
    torch.set_num_threads(2)
    results["channels_last_b64"] = time_windows(model, 64, repeats, channels_last=True)
    model = model.to(memory_format=torch.contiguous_format)
    results["bf16_autocast_b64"] = time_windows(model, 64, repeats, bf16=True)
    results["reuse_frame_features_4tracks"] = _sequencetime_windows(model, 4, repeats)
    if compile_:
        try:
            compiled = torch.compile(model)
            results["torch_compile_b64"] = time_windows(compiled, 64, repeats)
        except Exception as exc:  # report, do not fail the benchmark
            results["torch_compile_b64"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {
        "model": model_name, "weights": weights_note, "repeats": repeats,
        "statistic": "median", "results": results,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--weights", help="weights file (default: shipped weights, if any)")
    p.add_argument("--out", help="JSON output (default benchmarks/bench_MODEL.json)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")


def run(args: argparse.Namespace) -> int:
    report = benchmark(args.model, args.weights, args.repeats, not args.no_compile)
    out = Path(args.out or f"benchmarks/bench_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'variant':34s} {'batch':>5s} {'windows/s':>10s} {'ms/window':>10s}")
    for name, r in report["results"].items():
        if "error" in r:
            print(f"{name:34s} {r['error']}")
        else:
            print(f"{name:34s} {r['batch']:5d} {r['windows_per_s']:10.1f} "
                  f"{r['latency_ms_per_window']:10.2f}")
    print(f"wrote {out}")
    return 0
