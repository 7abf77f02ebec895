"""Benchmark of the simulator: generate a full set in both formats and read the test split back.

Figures go to a JSON file (default ``benchmarks/sim.json``): seconds, frames/s and bytes on
disk per step, the goals (compact ≤ 60 s and official layout ≤ 300 s for 100 000 frames on
2 cores), and the machine (CPU count, load average, Python/NumPy/OpenCV versions). Timings
include everything a user waits for: simulation, process start-up and writing.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from sim.generate import generate, package_version
from sim.seqcsist_io import load_dataset

DEFAULT_OUT = Path("benchmarks/sim.json")
GOALS_S = {"npz": 60.0, "seqcsist": 300.0}


def _disk(path: Path) -> tuple[int, int]:
    """(bytes, files) of everything under ``path``."""
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def _machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "package_version": package_version(),
    }


def run_bench(
    out: str | Path = DEFAULT_OUT,
    n_trajectories: int = 5000,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Time ``generate`` in both formats and ``load_dataset`` of the test split.

    Parameters
    ----------
    out : path
        JSON file to write (parent folders are created).
    n_trajectories : int
        Trajectories per set (5 000 = the full 100 000 frames).
    seed : int
        Generation seed.
    workers : int
        Writer processes for the official layout.
    progress : bool
        Show progress bars on stderr.

    Returns
    -------
    dict
        The figures written to ``out``.
    """
    machine = _machine()
    steps = {}
    with tempfile.TemporaryDirectory(prefix="sim-bench-") as tmp:
        for fmt in ("npz", "seqcsist"):
            root = Path(tmp) / fmt
            t0 = time.perf_counter()
            recipe = generate(root, n_trajectories, seed, fmt=fmt, workers=workers,
                              progress=progress)
            seconds = time.perf_counter() - t0
            frames = sum(c["frames"] for c in recipe["counts"].values())
            size, files = _disk(root)
            steps[f"generate_{fmt}"] = {
                "seconds": round(seconds, 3),
                "frames": frames,
                "frames_per_s": round(frames / seconds, 1),
                "bytes_on_disk": size,
                "files": files,
                "goal_s_for_100k_frames": GOALS_S[fmt],
                "meets_goal": seconds * 100_000 / frames <= GOALS_S[fmt],
            }
            t0 = time.perf_counter()
            test = load_dataset(root, "test")
            seconds = time.perf_counter() - t0
            steps[f"load_test_{fmt}"] = {
                "seconds": round(seconds, 3),
                "frames": len(test),
                "frames_per_s": round(len(test) / seconds, 1),
            }
    figures = {
        "benchmark": "sim",
        "n_trajectories": n_trajectories,
        "seed": seed,
        "workers": workers,
        "steps": steps,
        "machine": machine,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures
