"""Speed benchmark: ``python -m models bench --model NAME [--weights FILE] [--out FILE]``.

Measures windows/s at batch 1 and batch 64 and the latency per window on this machine's CPU,
for the plain model and for each optimisation that applies: thread count, channels_last,
torch.compile, whole 20-frame sequences through ``forward_sequences`` (models that share
per-frame features, such as DeRefNet, reuse them across the overlapping windows of a track),
and for those models the live unmixer's frame-by-frame steps with its feature cache (also
with the 1–2-channel convolutions through oneDNN, ``_conv2d_narrow``, beside
:mod:`models.layers.narrow`'s path); and only where the CPU runs bf16 natively, the model
converted to bfloat16 (``precision: bf16`` of the live unmixer, :mod:`models.precision`) at
batch 64 and in the live steps, with its accuracy against fp32 (``bf16_accuracy``) when
``--data`` is given. Every figure is the median of ``--repeats`` timed runs after a warm-up;
all variants run side by side in one process, next to the machine's fp32 matmul peak,
sampled between the variants (:class:`PeakSamples`).
At the top of the JSON (default ``benchmarks/bench_<model>.json``): ``peak_gflops`` (the
median of the samples; ``peak_gflops_best`` and ``peak_gflops_samples`` beside it),
``macs_per_window``, ``best`` (the fastest variant that keeps the accuracy) and
``fraction_of_peak`` (see :func:`benchmark`), ``best_fp32`` and ``fraction_of_peak_fp32``
(the same among the float32 variants); ``peak_gflops_threads1``, the one-thread peak,
goes with the ``_threads1`` variant (the live stage's default thread count). ``extractor``:
the sub-pixel extractor's median time per frame of 6 and of 24 windows on this model's maps.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.extract import extract_points
from models.harness import count_macs, predict_maps, score_predictions
from models.layers.narrow import conv2d_only
from models.machine import cpu_model
from models.precision import bf16_native, model_dtype
from models.protocol import eval_windows
from models.registry import get_model
from models.weights import WeightsError, load_model
from sim import load_dataset
from sim.dataset import simulate
from sim.geometry import PATCH, WINDOW

#: Environment variables that cap the instruction set torch, oneDNN, MKL and numba use; set, they
#: let an AVX-512 machine stand in for an AVX2 one, and the bench records them.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
              "NUMBA_CPU_NAME")


def call_seconds(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after one untimed warm-up call (and
    compilation for torch.compile)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _median_seconds(fn, repeats: int) -> float:
    return statistics.median(call_seconds(fn, repeats))


def _inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, WINDOW, PATCH, PATCH, generator=g) * 250, torch.full((batch,), 9)


def time_windows(model, batch: int, repeats: int, channels_last: bool = False) -> dict:
    """Median windows/s and ms per window of ``model`` on random windows of ``batch`` (in the
    model's dtype)."""
    windows, index = _inputs(batch)
    windows = windows.to(model_dtype(model))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            model(windows, index)

    sec = _median_seconds(run, repeats)
    return {"batch": batch, "seconds": sec, "windows_per_s": batch / sec,
            "latency_ms_per_window": 1e3 * sec / batch}


def time_sequences(model, tracks: int, repeats: int) -> dict:
    """Per-frame feature reuse over whole sequences: each frame's features computed once and
    shared by its 5 windows, 20-frame sequences of ``tracks`` tracks (16 windows each) in one
    ``forward_sequences`` call. ``macs_per_window``: the sequence's MACs over its windows."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(tracks, 20, PATCH, PATCH, generator=g) * 250
    start = torch.zeros(tracks, dtype=torch.int64)

    def run():
        with torch.inference_mode():
            model.forward_sequences(frames, start)

    sec = _median_seconds(run, repeats)
    n = tracks * 16
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.forward_sequences(frames[:1], start[:1])
    return {"batch": n, "seconds": sec, "windows_per_s": n / sec,
            "latency_ms_per_window": 1e3 * sec / n,
            "macs_per_window": counter.get_total_flops() // 2 // 16}


def time_live_steps(model, tracks: int, repeats: int, steps: int = 16) -> dict:
    """What the live unmixer stage computes for models with ``shares_frame_features``: one
    call per frame, in which each of ``tracks`` tracks brings one new frame (unfolded) and one
    window (its other 4 frames' features come from the cache). ``macs_per_window``: one
    frame's features plus one window's alignment and reconstruction."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(tracks, steps + WINDOW - 1, PATCH, PATCH, generator=g) * 250
    frames = frames.to(model_dtype(model))
    index = torch.full((tracks,), 9)
    with torch.inference_mode():
        past = [model.frame_features(frames[:, t])[0] for t in range(WINDOW - 1)]

    def step(t, ring):
        ring.append(model.frame_features(frames[:, t])[0])
        model.window_maps(torch.stack(ring[-WINDOW:], dim=1), index)

    def run():
        with torch.inference_mode():
            ring = list(past)
            for t in range(WINDOW - 1, WINDOW - 1 + steps):
                step(t, ring)

    sec = _median_seconds(run, repeats)
    n = tracks * steps
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        step(WINDOW - 1, list(past))
    return {"batch": tracks, "seconds": sec, "windows_per_s": n / sec,
            "latency_ms_per_window": 1e3 * sec / n,
            "macs_per_window": counter.get_total_flops() // 2 // tracks}


def time_extractor(model, repeats: int, sizes=(6, 24)) -> dict:
    """Median ms per call and per window of :func:`models.extract.extract_points` on ``model``'s
    maps of simulated windows, for calls of ``sizes`` windows (one frame's groups)."""
    windows, frame_index, _ = eval_windows(simulate(4, seed=0))
    with torch.inference_mode():
        maps = model(torch.as_tensor(windows), torch.as_tensor(frame_index))[0].numpy()
    out = {}
    for n in sizes:
        sec = _median_seconds(lambda n=n: extract_points(maps[:n], windows[:n]), repeats)
        out[str(n)] = {"ms_per_call": 1e3 * sec, "ms_per_window": 1e3 * sec / n}
    return out


def matmul_peak_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """This machine's fp32 matmul peak (GFLOP/s) with ``threads`` threads at this moment: the
    fastest of ``repeats`` products after a warm-up. Leaves torch's thread count as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(size, size, generator=g), torch.rand(size, size, generator=g)
    best = min(call_seconds(lambda: torch.mm(a, b), repeats))
    torch.set_num_threads(before)
    return 2 * size**3 / best / 1e9


class PeakSamples:
    """The two-thread matmul peak sampled between the variants (best of 5 products each time).

    ``median`` is the peak a fraction of peak divides by: the same statistic as the windows/s
    it divides, over the same minutes. On a shared host the best product of a whole run
    catches its neighbours' quiet moments (measured here: 112 and 161 GFLOP/s as the best of
    two runs an hour apart) while a median of windows/s does not, so the ratio of the two
    moved with the neighbours rather than with the model; ``best`` is reported beside it.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []

    def take(self) -> None:
        self.samples.append(matmul_peak_gflops(2, repeats=5))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _accuracy(model, dataset) -> dict:
    """Grid and points mAP (fractions) of ``model`` on ``dataset``, in the model's dtype."""
    pred = predict_maps(model, dataset)
    return {mode: score_predictions(pred, dataset, mode)["mAP"] for mode in ("grid", "points")}


#: Variants whose arithmetic is fp32: they keep the accuracy by construction.
FP32_VARIANTS = ("fp32_threads1_b1", "fp32_threads1_b64", "fp32_threads2_b1",
                 "fp32_threads2_b64", "channels_last_b64", "reuse_frame_features_4tracks",
                 "reuse_frame_features_channels_last_4tracks",
                 "live_steps_channels_last_6tracks",
                 "live_steps_channels_last_6tracks_threads1",
                 "live_steps_channels_last_6tracks_threads1_conv2d_narrow",
                 "live_steps_channels_last_6tracks_conv2d_narrow", "torch_compile_b64")


def _fraction(result: dict, peak_gflops: float) -> float:
    """A variant's arithmetic rate (2 × MACs per window × windows/s) over the fp32 peak."""
    return result["windows_per_s"] * 2 * result["macs_per_window"] / (peak_gflops * 1e9)


def _time_bf16(model, results: dict, repeats: int) -> list[str]:
    """The bf16 variants of ``model`` (already converted to bfloat16) into ``results``, at
    2 threads then the live steps on 1; returns their names."""
    results["bf16_b64"] = time_windows(model, 64, repeats)
    model = model.to(memory_format=torch.channels_last)
    results["bf16_channels_last_b64"] = time_windows(model, 64, repeats)
    names = ["bf16_b64", "bf16_channels_last_b64"]
    if model.shares_frame_features:
        results["bf16_live_steps_channels_last_6tracks"] = time_live_steps(model, 6, repeats)
        torch.set_num_threads(1)
        results["bf16_live_steps_channels_last_6tracks_threads1"] = time_live_steps(
            model, 6, repeats)
        torch.set_num_threads(2)
        names += ["bf16_live_steps_channels_last_6tracks",
                  "bf16_live_steps_channels_last_6tracks_threads1"]
    return names


def benchmark(model_name: str, weights: str | None, repeats: int, compile_: bool,
              dataset=None) -> dict:
    """Every variant's speed side by side, the machine's fp32 peak, and the best variant.

    ``best`` is the fastest variant that keeps the accuracy: an fp32 one, or bf16 when the
    CPU runs it natively and its grid and points mAP on ``dataset`` move less than 0.3
    points (without a dataset bf16 is not eligible). ``fraction_of_peak`` = best windows/s ×
    2 × the MACs that variant really spends per window / the median peak sample: one window's
    forward (``macs_per_window``), or with per-frame feature reuse the MACs of the frames and
    windows it computes over its windows (each variant's ``macs_per_window`` in ``results``).
    """
    try:
        model, meta = load_model(model_name, weights)
        weights_note = meta.get("sha256", "no weights needed")
    except WeightsError:
        model, weights_note = get_model(model_name).eval(), "untrained (speed only)"
    peaks = PeakSamples()
    peaks.take()
    peak_one_thread = matmul_peak_gflops(1)
    windows, index = _inputs(1)
    macs = count_macs(model, windows[0].numpy(), int(index[0]))
    results: dict[str, dict] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (1, 64):
            results[f"fp32_threads{threads}_b{batch}"] = time_windows(model, batch, repeats)
            peaks.take()
    torch.set_num_threads(2)
    results["channels_last_b64"] = time_windows(model, 64, repeats, channels_last=True)
    peaks.take()
    results["reuse_frame_features_channels_last_4tracks"] = time_sequences(model, 4, repeats)
    peaks.take()
    if model.shares_frame_features:
        results["live_steps_channels_last_6tracks"] = time_live_steps(model, 6, repeats)
        peaks.take()
        torch.set_num_threads(1)  # what the live unmixer stage runs with by default
        results["live_steps_channels_last_6tracks_threads1"] = time_live_steps(model, 6,
                                                                              repeats)
        with conv2d_only():  # the 1–2-channel convs through oneDNN, for comparison
            results["live_steps_channels_last_6tracks_threads1_conv2d_narrow"] = (
                time_live_steps(model, 6, repeats))
            torch.set_num_threads(2)
            results["live_steps_channels_last_6tracks_conv2d_narrow"] = time_live_steps(
                model, 6, repeats)
    model = model.to(memory_format=torch.contiguous_format)
    results["reuse_frame_features_4tracks"] = time_sequences(model, 4, repeats)
    eligible = list(FP32_VARIANTS)
    if bf16_native():
        bf16_model = copy.deepcopy(model).to(torch.bfloat16)
        bf16_names = _time_bf16(bf16_model, results, repeats)
        peaks.take()
        if dataset is not None:
            fp32, bf16 = _accuracy(model, dataset), _accuracy(bf16_model, dataset)
            delta = {m: 100 * (bf16[m] - fp32[m]) for m in fp32}
            results["bf16_accuracy"] = {"fp32": fp32, "bf16": bf16,
                                        "map_delta_points_x100": delta,
                                        "trajectories": dataset.n_trajectories}
            if all(abs(d) < 0.3 for d in delta.values()):
                eligible.extend(bf16_names)
    else:
        results["bf16"] = {"skipped": "bf16 is emulated on this CPU (no AVX-512 BF16/AMX): "
                                      "slower than fp32"}
    if compile_:
        try:
            compiled = torch.compile(model)
            results["torch_compile_b64"] = time_windows(compiled, 64, repeats)
        except Exception as exc:  # report, do not fail the benchmark
            results["torch_compile_b64"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    peaks.take()
    peak = peaks.median
    timed = {k: r for k, r in results.items() if k in eligible and "windows_per_s" in r}
    for r in results.values():
        if "windows_per_s" in r:
            r.setdefault("macs_per_window", macs)
    best = max(timed, key=lambda k: timed[k]["windows_per_s"])
    best_fp32 = max((k for k in timed if k in FP32_VARIANTS),
                    key=lambda k: timed[k]["windows_per_s"])
    return {
        "model": model_name, "weights": weights_note, "repeats": repeats,
        "statistic": "median",
        "peak_gflops": peak,
        "peak_gflops_best": max(peaks.samples),
        "peak_gflops_samples": peaks.samples,
        "peak_gflops_threads1": peak_one_thread,
        "macs_per_window": macs,
        "best": {"variant": best, "windows_per_s": timed[best]["windows_per_s"]},
        "fraction_of_peak": _fraction(timed[best], peak),
        "best_fp32": {"variant": best_fp32, "windows_per_s": timed[best_fp32]["windows_per_s"]},
        "fraction_of_peak_fp32": _fraction(timed[best_fp32], peak),
        "results": results,
        "extractor": time_extractor(model, max(repeats, 10)),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                    "processor": cpu_model(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "bf16_native": bf16_native(), "python": platform.python_version(),
                    "load_average": list(os.getloadavg()),
                    "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if k in os.environ}},
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--weights", help="weights file (default: shipped weights, if any)")
    p.add_argument("--out", help="JSON output (default benchmarks/bench_MODEL.json)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--data", help="dataset whose test split measures the accuracy of reduced "
                                  "precision (bf16 is only eligible as 'best' with it)")
    p.add_argument("--limit-trajectories", type=int, default=100,
                   help="trajectories of --data used for the accuracy check (default 100)")


def run(args: argparse.Namespace) -> int:
    dataset = None
    if args.data:
        dataset = load_dataset(args.data, "test")
        dataset = dataset.subset(range(min(args.limit_trajectories, dataset.n_trajectories)))
    report = benchmark(args.model, args.weights, args.repeats, not args.no_compile, dataset)
    out = Path(args.out or f"benchmarks/bench_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'variant':34s} {'batch':>5s} {'windows/s':>10s} {'ms/window':>10s}")
    for name, r in report["results"].items():
        if "map_delta_points_x100" in r:
            delta = ", ".join(f"{m} {d:+.2f}" for m, d in r["map_delta_points_x100"].items())
            print(f"{name:34s} bf16 − fp32 mAP ×100: {delta}")
        elif "windows_per_s" not in r:
            print(f"{name:34s} {r.get('error') or r.get('skipped')}")
        else:
            print(f"{name:34s} {r['batch']:5d} {r['windows_per_s']:10.1f} "
                  f"{r['latency_ms_per_window']:10.2f}")
    print(f"best: {report['best']['variant']} {report['best']['windows_per_s']:.1f} windows/s; "
          f"peak {report['peak_gflops']:.0f} GFLOP/s; fraction of peak "
          f"{report['fraction_of_peak']:.3f} ({report['machine']['cpu_capability']}); best fp32: "
          f"{report['best_fp32']['variant']}, fraction {report['fraction_of_peak_fp32']:.3f}")
    for n, r in report["extractor"].items():
        print(f"extractor, {n} windows: {r['ms_per_call']:.2f} ms per call, "
              f"{r['ms_per_window']:.2f} ms per window")
    print(f"wrote {out}")
    return 0
