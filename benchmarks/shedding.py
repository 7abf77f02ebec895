"""Dropping frames against reusing maps: the two ways the live chain sheds an overload.

Runs ``python -m pipeline run configs/live.yaml`` (processes mode, paced at 25 Hz) for each
(model, groups) setting twice, once with the default rule (the unmixer's input queue drops
the oldest frames) and once with ``stages.unmixer.frame_budget_ms`` (every frame goes on, some
windows reuse their track's last map: :mod:`stages.shedding`), repeats interleaved, and
writes the medians of the figures that say what the user gets::

    python benchmarks/shedding.py --out benchmarks/shedding.json   # ~10 min on 2 cores

Figures per run: frames through (of those the source sent), CSO-mAP of the detected groups
over the frames that came through, end-to-end CSO-mAP (every target of every frame, lost
frames counted as missed), tracking GOSPA (px per frame, lower is better) and identity
switches. The JSON also records the CPU's torch capability; the markdown table beside it is
what ``benchmarks/shedding.md`` shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SETTINGS = (("fastunmix", 24), ("derefnet", 6), ("derefnet", 2))
RULES = {"drop frames": None, "reuse maps": 30.0}


def run_once(model: str, groups: int, budget: float | None, frames: int, report: Path) -> dict:
    """One paced processes-mode run; the figures of its report."""
    sets = {"stages.unmixer.model": model, "stages.source.groups": groups,
            "stages.unmixer.frame_budget_ms": "null" if budget is None else budget}
    cmd = [sys.executable, "-m", "pipeline", "run", "configs/live.yaml", "--frames",
           str(frames), "--report", str(report)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    subprocess.run(cmd, check=True, capture_output=True)
    data = json.loads(report.read_text())
    scores = data["scores"]["scoring"]
    return {
        "frames_out": data["frames_out"],
        "frames_in": data["frames_in"],
        "cso_map_detected": scores["cso_map"]["mAP"],
        "cso_map_end_to_end": scores["cso_map_end_to_end"]["mAP"],
        "tracking_gospa": scores["tracking"]["gospa"]["distance"],
        "id_switches": scores["tracking"]["id_switches"],
    }


def table(rows: list[dict]) -> str:
    """Markdown table of the median rows."""
    head = ("| model | groups | rule | frames through | CSO-mAP detected | CSO-mAP end to end "
            "| tracking GOSPA | id switches |\n|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['model']} | {r['groups']} | {r['rule']} | {r['frames_out']:.0f} of "
        f"{r['frames_in']:.0f} | {100 * r['cso_map_detected']:.1f} | "
        f"{100 * r['cso_map_end_to_end']:.1f} | {r['tracking_gospa']:.2f} | "
        f"{r['id_switches']:.0f} |\n" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/shedding.json")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for model, groups in SETTINGS:
                for rule, budget in RULES.items():
                    report = Path(tmp) / f"{model}-{groups}-{budget}-{repeat}.json"
                    figures = run_once(model, groups, budget, args.frames, report)
                    runs.setdefault((model, groups, rule), []).append(figures)
                    print(model, groups, rule, figures, flush=True)
    rows = [{"model": m, "groups": g, "rule": r, "budget_ms": RULES[r],
             **{k: statistics.median(f[k] for f in figs) for k in figs[0]},
             "runs": figs} for (m, g, r), figs in runs.items()]
    result = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "frames": args.frames, "repeats": args.repeats, "rate_hz": 25.0, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
