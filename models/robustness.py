"""``python -m models robustness``: the paper's Tables IV, V and VI side by side with ours.

For every variant set (:data:`SETS`: clean 2–4 targets, the IR-like backgrounds of Table IV,
noise σ = 2…5 of Table V, 2–8 targets of Table VI) and every model (default ``derefnet`` and
``fastunmix`` with their shipped weights), one prediction pass over the set's test split
(750 trajectories of a 5,000-trajectory set, 12,000 evaluated frames), scored in grid mode (the
paper's protocol) and in points mode with the extractor's defaults (no flag: the noise level is
estimated, the target count found), next to the paper's DeRefNet (grid) and the goal. Points
mode also gives the target-count accuracy per true K and the noise estimate's median; a second
table scores the points snapped to the paper's grid (:mod:`models.snap`) next to the exact GT
map and the exact GT points on that grid (the two oracles of :mod:`models.protocol`). Every
trajectory's background level is subtracted first, as the live cropper does
(:meth:`sim.dataset.SeqDataset.background_subtracted`; no change on sets without a background).

A set missing under ``--data-root`` is generated first with ``python -m sim generate`` and the
set's flags (:data:`SETS` holds the exact command). Results go to ``--out`` (Markdown) and the
same name with ``.json``; a (set, model) pair already in that JSON with the same weights
(sha256), trajectory count and extractor settings is not run again, so an interrupted run
resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from models.diagnostics import count_accuracy
from models.evaluate import noise_summary
from models.extract import ExtractorConfig, estimate_noise
from models.harness import detections_from_maps, predict_maps
from models.machine import cpu_model
from models.metric import match_detections, summarize
from models.protocol import grid_oracle, ground_truths, snapped_oracle, splat_oracle
from models.snap import SNAP_RULE, snapped_detections
from models.weights import default_weights, load_model, sha256_file
from sim import load_dataset
from sim.dataset import SeqDataset
from sim.generate import generate
from sim.trajectory import TrajectoryRules

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "robustness.md"


@dataclasses.dataclass(frozen=True)
class VariantSet:
    """One test set of the robustness tables.

    Attributes
    ----------
    key, label : str
        Short name (folder and JSON key) and table label.
    seed : int
        ``python -m sim generate`` seed.
    targets : tuple of int
        (min, max) targets per trajectory.
    noise : float
        Additive noise σ, grey levels.
    backgrounds : str or None
        ``--backgrounds`` value.
    paper : float or None
        The paper's DeRefNet CSO-mAP ×100 (grid) on this variant.
    goal_points, goal_grid : float or None
        The goals of the robustness issue (×100).
    """

    key: str
    label: str
    seed: int
    targets: tuple[int, int] = (2, 4)
    noise: float = 0.0
    backgrounds: str | None = None
    paper: float | None = None
    goal_points: float | None = None
    goal_grid: float | None = None

    def command(self, root: Path, trajectories: int) -> str:
        """The ``python -m sim generate`` command that makes this set."""
        parts = [f"python -m sim generate --out {root / self.key} --trajectories {trajectories}",
                 f"--seed {self.seed} --format npz"]
        if self.targets != (2, 4):
            parts.append(f"--targets {self.targets[0]}-{self.targets[1]}")
        if self.noise:
            parts.append(f"--noise {self.noise:g}")
        if self.backgrounds:
            parts.append(f"--backgrounds {self.backgrounds}")
        return " ".join(parts)


#: The sets, paper figures from its Tables VII (clean), IV, V and VI.
SETS = (
    VariantSet("clean", "clean, 2–4 targets", 2026, paper=51.55, goal_points=95, goal_grid=55),
    VariantSet("backgrounds", "IR-like backgrounds (Table IV)", 2029, backgrounds="builtin",
               paper=47.48, goal_points=85, goal_grid=50),
    VariantSet("noise2", "σ = 2 (Table V)", 2028, noise=2, paper=49.09, goal_points=85),
    VariantSet("noise3", "σ = 3 (Table V)", 2028, noise=3, paper=48.40),
    VariantSet("noise4", "σ = 4 (Table V)", 2028, noise=4, paper=48.41),
    VariantSet("noise5", "σ = 5 (Table V)", 2028, noise=5, paper=47.23, goal_points=65),
    VariantSet("targets2to8", "2–8 targets (Table VI)", 2027, targets=(2, 8), paper=49.79,
               goal_points=80, goal_grid=52),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="derefnet,fastunmix",
                   help="comma-separated registered models (default derefnet,fastunmix)")
    p.add_argument("--sets", default=",".join(s.key for s in SETS),
                   help=f"comma-separated sets (default all: {','.join(s.key for s in SETS)})")
    p.add_argument("--data-root", default="data/robustness",
                   help="folder of the sets; missing ones are generated (default %(default)s)")
    p.add_argument("--trajectories", type=int, default=5000,
                   help="trajectories per generated set (test split: 15 %%; default 5000)")
    p.add_argument("--limit-trajectories", type=int,
                   help="score only the first N test trajectories (a quick look)")
    p.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                   help="score MODEL with these weights instead of its shipped ones (e.g. a "
                        "candidate before it ships); repeatable")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown file (JSON beside it)")


def ensure_set(variant: VariantSet, root: Path, trajectories: int) -> Path:
    """The set's folder, generated first when it has no test split."""
    folder = root / variant.key
    if not (folder / "test.npz").exists():
        print(f"generating {variant.key}: {variant.command(root, trajectories)}", flush=True)
        generate(folder, trajectories, variant.seed, fmt="npz",
                 rules=TrajectoryRules(min_targets=variant.targets[0],
                                       max_targets=variant.targets[1]),
                 noise_sigma=variant.noise, backgrounds=variant.backgrounds, progress=False)
    return folder


def load_test_split(folder: Path, limit: int | None) -> SeqDataset:
    """One set's test split (its first ``limit`` trajectories), background level subtracted as
    the live cropper does."""
    dataset = load_dataset(folder, "test")
    if limit is not None:
        dataset = dataset.subset(range(min(limit, dataset.n_trajectories)))
    return dataset.background_subtracted()


def score_oracles(dataset: SeqDataset) -> dict:
    """``grid`` (exact GT maps), ``splat`` (exact splat maps, the networks' training target, in
    grid mode) and ``snapped`` (exact GT points on the grid) on a test split."""
    return {"grid": grid_oracle(dataset), "splat": splat_oracle(dataset),
            "snapped": snapped_oracle(dataset)}


def score_pair(model_name: str, dataset: SeqDataset, batch_size: int,
               weights: Path | None = None) -> dict:
    """Grid, points and snapped figures of one model on a test split (:func:`load_test_split`)."""
    model, _ = load_model(model_name, weights)
    tic = time.perf_counter()
    pred = predict_maps(model, dataset, batch_size)
    truths = ground_truths(dataset, pred.frames)
    grid_dets = detections_from_maps(pred.maps_for("grid"), pred.windows, "grid")
    grid = summarize(match_detections(grid_dets, truths))
    points_dets = detections_from_maps(pred.maps, pred.windows, "points",
                                       saturation=pred.saturation, sigma=pred.sigma)
    points = summarize(match_detections(points_dets, truths))
    snapped = summarize(match_detections(snapped_detections(points_dets), truths))
    return {"grid": grid, "grid_output": "grid head" if "grid" in model.outputs() else "map",
            "points": points, "snapped": snapped,
            "count_accuracy": count_accuracy(points_dets, truths),
            "noise_estimate": noise_summary(estimate_noise(pred.windows)),
            "trajectories": dataset.n_trajectories,
            "frames": len(pred.frames), "seconds": round(time.perf_counter() - tic, 1)}


def _grid_outputs(doc: dict) -> str:
    """Which output each model's grid column scores, in words."""
    said = []
    for m in doc["models"]:
        kinds = {r[m].get("grid_output", "map") for r in doc["results"].values() if m in r}
        if kinds == {"grid head"}:
            said.append(f"{m}'s grid head (trained on the snapped truth, so the GT points "
                        "snapped column is its ceiling)")
        elif kinds == {"map"}:
            said.append(f"{m}'s splat map (it cannot beat the splat map column by much)")
        elif kinds:
            said.append(f"{m}'s grid head on some sets, its map on others (older results)")
    return "; ".join(said)


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def markdown(doc: dict) -> str:
    """The tables of the results document."""
    models = doc["models"]
    head = ("| set | paper DeRefNet (grid) | " + " | ".join(
        f"{m} grid | {m} points" for m in models) + " | goal points / grid |")
    lines = [
        "# Robustness: the paper's Tables IV, V and VI, side by side",
        "",
        f"Generated by `{doc['command']}` on {doc['machine']['cpu']} "
        f"(torch CPU capability {doc['machine']['cpu_capability']}). CSO-mAP ×100 on each "
        "set's test split, each trajectory's background level subtracted as the live "
        "cropper does; points mode with the extractor's defaults (no flag).",
        "",
        head,
        "|---|---:|" + "---:|---:|" * len(models) + "---|",
    ]
    for variant in SETS:
        results = doc["results"].get(variant.key)
        if not results:
            continue
        cells = []
        for m in models:
            r = results.get(m)
            cells += ([_cell(r["grid"]["mAP"]), _cell(r["points"]["mAP"])] if r else ["—", "—"])
        goal = (f"{variant.goal_points or '—'} / {variant.goal_grid or '—'}"
                if variant.goal_points or variant.goal_grid else "—")
        paper = "—" if variant.paper is None else f"{variant.paper:.2f}"
        lines.append(f"| {variant.label} | {paper} | " + " | ".join(cells) + f" | {goal} |")
    lines += ["", "On the paper's grid: every model's points snapped to the 1/3-px grid (each to "
              "its nearest free node that lies nearer to it than to the frame's other points) "
              "and ranked by how close they lie to it (`--mode snapped`), next "
              "to the oracles: the exact GT map and the exact splat map (the networks' training "
              "target) in grid mode, and the exact GT points snapped. The grid columns above "
              f"are the networks' own outputs: {_grid_outputs(doc)}.", "",
              "| set | GT map (grid) | splat map (grid) | GT points (snapped) | " + " | ".join(
                  f"{m} snapped" for m in models) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(models)]
    for variant in SETS:
        results = doc["results"].get(variant.key)
        oracle = doc.get("oracles", {}).get(variant.key)
        if not results or not oracle:
            continue
        cells = [_cell(results.get(m, {}).get("snapped", {}).get("mAP")) for m in models]
        lines.append(f"| {variant.label} | {_cell(oracle['grid']['mAP'])} | "
                     f"{_cell(oracle['splat']['mAP'])} | "
                     f"{_cell(oracle['snapped']['mAP'])} | " + " | ".join(cells) + " |")
    lines += ["", "Target count (points mode): fraction of windows with the right number of "
              "points, per true K; noise: the extractor's per-window estimate (median, grey "
              "levels) against the set's true σ.", "",
              "| set | model | count right per K | noise estimate | test trajectories |",
              "|---|---|---|---:|---:|"]
    for variant in SETS:
        for m, r in (doc["results"].get(variant.key) or {}).items():
            counts = ", ".join(f"K={k} {100 * c['right']:.1f} %"
                               for k, c in r["count_accuracy"].items())
            lines.append(f"| {variant.label} | {m} | {counts} | "
                         f"{r['noise_estimate']['median']:.2f} (true {variant.noise:g}) | "
                         f"{r['trajectories']} |")
    lines += ["", "Sets (each made by the command shown if missing):", ""]
    lines += [f"- {v.label}: `{v.command(Path(doc['data_root']), doc['trajectories'])}`"
              for v in SETS if v.key in doc["results"]]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {s.key for s in SETS})
    if unknown:
        raise SystemExit(f"unknown set(s) {unknown}; choose from {[s.key for s in SETS]}")
    chosen = dict(pair.split("=", 1) for pair in args.weights if "=" in pair)
    if len(chosen) != len(args.weights) or set(chosen) - set(models):
        raise SystemExit(f"--weights takes MODEL=PATH with MODEL among --models {models}, got "
                         f"{args.weights}")
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    doc = json.loads(json_path.read_text()) if json_path.exists() else {"results": {}}
    root = Path(args.data_root)
    # the table shows every model and set of the JSON; its command reproduces all of it
    shown = list(dict.fromkeys([*doc.get("models", []), *models]))
    sets = [s.key for s in SETS if s.key in wanted or s.key in doc["results"]]
    command = (f"python -m models robustness --models {','.join(shown)} --sets "
               f"{','.join(sets)} --data-root {root} --trajectories {args.trajectories}"
               + (f" --limit-trajectories {args.limit_trajectories}"
                  if args.limit_trajectories else "")
               + "".join(f" --weights {w}" for w in args.weights))
    doc.update(command=command, models=shown, data_root=str(root),
               trajectories=args.trajectories,
               machine={"cpu": cpu_model(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")})
    extractor = dataclasses.asdict(ExtractorConfig())  # part of the resume key
    for variant in (s for s in SETS if s.key in wanted):
        dataset = load_test_split(ensure_set(variant, root, args.trajectories),
                                  args.limit_trajectories)
        oracles = doc.setdefault("oracles", {})
        kept = oracles.get(variant.key, {})
        if kept.get("limit", -1) != args.limit_trajectories or kept.get("snap_rule") != SNAP_RULE:
            oracles[variant.key] = {**score_oracles(dataset), "limit": args.limit_trajectories,
                                    "snap_rule": SNAP_RULE}
        for m in models:
            weights = Path(chosen[m]) if m in chosen else default_weights(m)
            sha = sha256_file(weights) if weights.exists() else None
            old = doc["results"].get(variant.key, {}).get(m)
            if old and old.get("weights_sha256") == sha and old.get("limit") == \
                    args.limit_trajectories and old.get("background_subtracted") and \
                    old.get("saturation_censored") and old.get("extractor") == extractor \
                    and old.get("snap_rule") == SNAP_RULE:
                continue
            result = score_pair(m, dataset, args.batch_size, weights if m in chosen else None)
            result.update(weights_sha256=sha, limit=args.limit_trajectories,
                          background_subtracted=True, saturation_censored=True,
                          extractor=extractor, snap_rule=SNAP_RULE)
            doc["results"].setdefault(variant.key, {})[m] = result
            print(f"{variant.key:12s} {m:10s} grid {_cell(result['grid']['mAP'])}  points "
                  f"{_cell(result['points']['mAP'])}  ({result['seconds']} s)", flush=True)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(doc, indent=2) + "\n")  # resumable
    out.write_text(markdown(doc))
    print(f"written to {out} and {json_path}")
    return 0
