"""``python -m models generalization``: every model on every scene family, beside the ceiling.

For every set of :data:`SETS` (scene families of :mod:`sim.families`: the paper's rules,
CSIST-100K's, random layouts with 1–8 or 1–6 targets and wide brightness, a lone target, the
random layouts at PSF σ 0.4 / 0.6 / 0.7 stated in the data, and with noise σ 2 / 4) and every
model (default ``fastunmix`` and ``derefnet``, shipped weights, the extractor's defaults: as
``python -m models evaluate`` runs them with no flag), one prediction pass over the set's test
split, scored

- in points and grid mode with CSO-mAP (rule-exact, :mod:`models.metric`);
- with the diagnostics of :mod:`models.diagnostics`: count accuracy per true K, CSO-mAP per
  true K, the SMLM protocol (one-to-one pairs within 0.25 px: Jaccard, RMSE, efficiency),
  RMSE / √CRLB of the pairs, recall by nearest-neighbour distance and by brightness;

next to the ceilings of :mod:`models.ceiling`: the Cramér–Rao bound's AP (each target's
hit probability averaged over the thresholds) and the count-known fit started at the truth
(scored like a method), and the exact GT map in grid mode.

A set missing under ``--data-root`` is generated with the ``python -m sim generate`` command
:meth:`FamilySet.command` shows (267 trajectories: a 40-trajectory, 640-window test split).
Results go to ``--out`` (Markdown) and the same name with ``.json``; a (set, model) pair
already there with the same weights (sha256), test trajectories and extractor settings is not
run again, nor a set's ceiling, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.ceiling import crlb_covariances, hit_probability, truth_fit, window_parameters
from models.diagnostics import (
    BRIGHTNESS_EDGES,
    RADIUS,
    SEPARATION_EDGES,
    breakdown,
    count_accuracy,
    crlb_efficiency,
    localisation_summary,
    nearest_other,
)
from models.evaluate import extractor_config
from models.extract import ExtractorConfig, extract_points
from models.harness import detections_from_maps, predict_maps
from models.machine import cpu_model
from models.metric import THRESHOLDS, match_detections, summarize
from models.protocol import eval_windows, grid_oracle, ground_truths
from models.robustness import load_test_split
from models.weights import default_weights, load_model, sha256_file
from sim.dataset import SeqDataset
from sim.families import PRESETS, override
from sim.generate import generate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "generalization.md"
#: Generated trajectories per set: the test split (15 %) holds 40 of them, 640 windows.
DEFAULT_TRAJECTORIES = 267
#: Largest K whose RMSE / √CRLB the table quotes separately (the efficiency goal's range).
EFFICIENCY_K = 3


@dataclasses.dataclass(frozen=True)
class FamilySet:
    """One test set of the generalization table.

    Attributes
    ----------
    key, label : str
        Short name (folder and JSON key) and table label.
    preset : str
        ``python -m sim generate --preset``.
    seed : int
        Its ``--seed``.
    targets : tuple of int or None
        ``--targets`` (None: the preset's).
    psf, noise : float
        ``--psf`` (PSF σ, px) and ``--noise`` (Gaussian σ, grey levels).
    brightness, radius, separation : tuple of float or None
        ``--brightness``, ``--radius``, ``--separation`` (None: the preset's).
    """

    key: str
    label: str
    preset: str
    seed: int
    targets: tuple[int, int] | None = None
    psf: float = 0.5
    noise: float = 0.0
    brightness: tuple[float, float] | None = None
    radius: tuple[float, float] | None = None
    separation: tuple[float, float] | None = None

    def families(self):
        low, high = self.targets or (None, None)
        return override(PRESETS[self.preset], min_targets=low, max_targets=high,
                        brightness=self.brightness, radius=self.radius,
                        separation=self.separation)

    def command(self, root: Path, trajectories: int) -> str:
        """The ``python -m sim generate`` command that makes this set."""
        parts = [f"python -m sim generate --out {root / self.key} --trajectories {trajectories}",
                 f"--seed {self.seed} --format npz --preset {self.preset}"]
        if self.targets:
            parts.append(f"--targets {self.targets[0]}-{self.targets[1]}")
        if self.psf != 0.5:
            parts.append(f"--psf {self.psf:g}")
        if self.noise:
            parts.append(f"--noise {self.noise:g}")
        for name in ("brightness", "radius", "separation"):
            if getattr(self, name):
                parts.append(f"--{name} " + "-".join(f"{v:g}" for v in getattr(self, name)))
        return " ".join(parts)


SETS = (
    FamilySet("paper", "paper rules (2–4, '+' layout)", "paper", 3401),
    FamilySet("csist100k", "CSIST-100K rules (1–5 in one pixel)", "csist100k", 3402),
    FamilySet("realistic", "realistic: random layouts, 1–8, brightness 80–250", "realistic",
              3403),
    FamilySet("random1to6", "random layouts, 1–6, brightness 80–250", "realistic", 3404,
              targets=(1, 6)),
    FamilySet("single", "one target, brightness 80–250", "single", 3405),
    FamilySet("psf04", "random 1–6 at PSF σ = 0.4", "realistic", 3406, targets=(1, 6), psf=0.4),
    FamilySet("psf06", "random 1–6 at PSF σ = 0.6", "realistic", 3407, targets=(1, 6), psf=0.6),
    FamilySet("psf07", "random 1–6 at PSF σ = 0.7", "realistic", 3408, targets=(1, 6), psf=0.7),
    FamilySet("noise2", "random 1–6, noise σ = 2", "realistic", 3409, targets=(1, 6), noise=2),
    FamilySet("noise4", "random 1–6, noise σ = 4", "realistic", 3410, targets=(1, 6), noise=4),
    FamilySet("single100", "one target, brightness 100–240", "single", 3411,
              brightness=(100.0, 240.0)),
    FamilySet("pair", "two targets 0.4–1.6 px apart, brightness 100–240", "realistic", 3412,
              targets=(2, 2), brightness=(100.0, 240.0), radius=(0.8, 0.8),
              separation=(0.4, 0.4)),
    FamilySet("paper06", "paper rules at PSF σ = 0.6", "paper", 3413, psf=0.6),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="fastunmix,derefnet",
                   help="comma-separated registered models (default fastunmix,derefnet)")
    p.add_argument("--sets", default=",".join(s.key for s in SETS),
                   help=f"comma-separated sets (default all: {','.join(s.key for s in SETS)})")
    p.add_argument("--data-root", default="data/generalization",
                   help="folder of the sets; missing ones are generated (default %(default)s)")
    p.add_argument("--trajectories", type=int, default=DEFAULT_TRAJECTORIES,
                   help="trajectories per generated set (test split: 15 %%; default "
                        "%(default)s, 40 test trajectories)")
    p.add_argument("--limit-trajectories", type=int,
                   help="score only the first N test trajectories (a quick look)")
    p.add_argument("--weights", help="score the models with these weights instead of their "
                                      "shipped ones (one model; name the row with --tag)")
    p.add_argument("--extract", action="append", default=[], metavar="KEY=VALUE",
                   help="an ExtractorConfig field for the points mode (e.g. count=fit); "
                        "repeatable; name the row with --tag")
    p.add_argument("--tag", help="the rows of this run are MODEL TAG (e.g. 'count fit'), kept "
                                 "beside the default rows")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown file (JSON beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def ensure_set(family_set: FamilySet, root: Path, trajectories: int) -> Path:
    """The set's folder, generated first when it has no test split."""
    folder = root / family_set.key
    if not (folder / "test.npz").exists():
        generate(folder, trajectories, family_set.seed, fmt="npz",
                 rules=family_set.families(), noise_sigma=family_set.noise,
                 sigma=family_set.psf, preset=family_set.preset, progress=False)
    return folder


def _per_k(dets: list, truths: list) -> dict:
    """CSO-mAP (×1) of the frames of each true K: key ``str(K)``."""
    true_k = np.array([len(t) for t in truths])
    return {str(k): summarize(match_detections([dets[i] for i in np.flatnonzero(true_k == k)],
                                               [truths[i] for i in np.flatnonzero(true_k == k)]))
            ["mAP"] for k in np.unique(true_k)}


def _small_k(items: list, truths: list, most: int = EFFICIENCY_K) -> list:
    return [x for x, t in zip(items, truths, strict=True) if len(t) <= most]


def diagnose(dets: list, truths: list, bound: dict) -> dict:
    """The figures of one method's detections on a set (points or fitted)."""
    hit, trace = bound["hit_at_radius"], bound["trace"]
    return {
        "cso": summarize(match_detections(dets, truths)),
        "per_k": _per_k(dets, truths),
        "count_accuracy": count_accuracy(dets, truths),
        "localisation": localisation_summary(dets, truths),
        "crlb_efficiency": crlb_efficiency(dets, truths, trace),
        "crlb_efficiency_small_k": crlb_efficiency(_small_k(dets, truths),
                                                   _small_k(truths, truths),
                                                   _small_k(trace, truths)),
        "by_separation": breakdown(dets, truths, nearest_other(truths), SEPARATION_EDGES, hit),
        "by_brightness": breakdown(dets, truths, [t[:, 2] for t in truths], BRIGHTNESS_EDGES,
                                   hit),
    }


def bound_of(dataset: SeqDataset, windows_truth: list[np.ndarray], noise: float) -> dict:
    """Per evaluated window, the Cramér–Rao figures of its truths (``windows_truth``:
    :func:`~models.ceiling.window_parameters`): ``hit`` (m_i, thresholds) hit
    probabilities, ``hit_at_radius`` (m_i,) at the SMLM radius and ``trace`` (m_i,) of the
    position covariance (px²)."""
    hit, at_radius, trace = [], [], []
    for params in windows_truth:
        cov = crlb_covariances(params, dataset.sigma, noise)
        hit.append(hit_probability(cov, THRESHOLDS))
        at_radius.append(hit_probability(cov, [RADIUS])[:, 0])
        trace.append(np.trace(cov, axis1=1, axis2=2))
    return {"hit": hit, "hit_at_radius": at_radius, "trace": trace}


def score_ceiling(dataset: SeqDataset, noise: float) -> tuple[dict, dict]:
    """The set's ceilings: (the JSON figures, the per-frame bound for the models' rows).

    ``crlb``: each truth's hit probability averaged over truths, per threshold, and their
    mean (the AP of an estimator at the bound whose scores rank its hits first); ``fit``: the
    count-known fit started at the truth, scored with every figure of :func:`diagnose`;
    ``grid_oracle``: the exact GT map in grid mode.
    """
    windows, _, frames = eval_windows(dataset)
    truths = ground_truths(dataset, frames)
    params = window_parameters(dataset, frames)
    bound = bound_of(dataset, params, noise)
    hits = np.concatenate(bound["hit"])  # (targets, thresholds)
    crlb = {f"AP{round(100 * d):02d}": float(h) for d, h in zip(THRESHOLDS, hits.mean(axis=0),
                                                                 strict=True)}
    crlb["mAP"] = float(hits.mean())
    true_k = np.array([len(t) for t in truths])
    crlb["per_k"] = {str(k): float(np.concatenate([bound["hit"][i] for i in
                                                   np.flatnonzero(true_k == k)]).mean())
                     for k in np.unique(true_k)}
    fitted = [truth_fit(w, p, dataset.sigma, noise) for w, p in zip(windows, params, strict=True)]
    fit_points = [np.column_stack([f[:, :2], f[:, 4]]) for f in fitted]
    return ({"crlb": crlb, "fit": diagnose(fit_points, truths, bound),
             "grid_oracle": grid_oracle(dataset)}, bound)


def score_model(model_name: str, dataset: SeqDataset, batch_size: int, bound: dict,
                weights: Path | None = None, extractor: ExtractorConfig | None = None) -> dict:
    """Points and grid figures of one model (by default its shipped weights and the
    extractor's defaults)."""
    extractor = ExtractorConfig() if extractor is None else extractor
    model, _ = load_model(model_name, weights)
    tic = time.perf_counter()
    pred = predict_maps(model, dataset, batch_size)
    truths = ground_truths(dataset, pred.frames)
    points = detections_from_maps(
        pred.maps, pred.windows, "points",
        lambda m, w, s: extract_points(m, w, extractor, s, pred.sigma), pred.saturation)
    grid = detections_from_maps(pred.maps_for("grid"), pred.windows, "grid")
    return {"points": diagnose(points, truths, bound),
            "grid": summarize(match_detections(grid, truths)),
            "grid_output": "grid head" if "grid" in model.outputs() else "map",
            "frames": len(pred.frames), "trajectories": dataset.n_trajectories,
            "seconds": round(time.perf_counter() - tic, 1)}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cell(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(doc: dict) -> str:
    """The tables of the results document."""
    models = doc["models"]
    keys = [s for s in SETS if s.key in doc["results"]]
    out = [
        "# Generalization: every model on every scene family, beside the ceiling",
        "",
        f"Generated by `{doc['command']}` at commit {doc.get('commit') or 'unknown'} on "
        f"{doc['machine']['cpu']} (torch CPU capability {doc['machine']['cpu_capability']}). "
        "CSO-mAP ×100 on each set's test split (sizes below). A row named after a model "
        "alone is its shipped weights with the extractor's defaults, no flag (as `python -m "
        "models evaluate` runs it); a tagged row is made by its command under Rows. "
        "**Bound**: the Cramér–Rao bound's AP (each target's hit probability, averaged over "
        "targets and thresholds; unbiased estimators that know the count; learned priors can "
        "beat it where it is near-singular). **Fit**: the count-known fit started at the "
        "truth, scored like a method (not reachable in practice). **GT map**: the exact GT "
        "map in grid mode.",
        "",
        "| set | windows | bound | fit | " + " | ".join(f"{m} points" for m in models)
        + " | GT map (grid) | " + " | ".join(f"{m} grid" for m in models) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(models) + "---:|" + "---:|" * len(models),
    ]
    for s in keys:
        r = doc["results"][s.key]
        c = r["ceiling"]
        pts = [_cell(r.get(m, {}).get("points", {}).get("cso", {}).get("mAP")) for m in models]
        grd = [_cell(r.get(m, {}).get("grid", {}).get("mAP")) for m in models]
        out.append(f"| {s.label} | {r['windows']} | {_cell(c['crlb']['mAP'])} | "
                   f"{_cell(c['fit']['cso']['mAP'])} | " + " | ".join(pts)
                   + f" | {_cell(c['grid_oracle']['mAP'])} | " + " | ".join(grd) + " |")
    out += ["", "## Why points are lost", "",
            f"SMLM protocol (one-to-one pairs within {RADIUS} px; Jaccard ×100, RMSE of the "
            "pairs in px, efficiency E = 100 − √((100(1 − J))² + (100·RMSE)²)) and RMSE / "
            f"√CRLB of the pairs (all K, and K ≤ {EFFICIENCY_K}; 1 = efficient), points mode.",
            "", "| set | method | Jaccard | RMSE px | E | RMSE/√CRLB | RMSE/√CRLB K≤3 |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for s in keys:
        r = doc["results"][s.key]
        rows = [("fit", r["ceiling"]["fit"])] + [(m, r[m]["points"]) for m in models if m in r]
        for name, d in rows:
            loc = d["localisation"]
            out.append(f"| {s.label} | {name} | {_cell(loc['jaccard'])} | {_num(loc['rmse'])} "
                       f"| {_num(loc['efficiency'], 1)} | {_num(d['crlb_efficiency'], 2)} | "
                       f"{_num(d['crlb_efficiency_small_k'], 2)} |")
    out += ["", "## Per true target count K", "",
            "CSO-mAP ×100 of the windows with K targets (points mode), and the fraction of "
            "them whose detections number exactly K (count right, %).", "",
            "| set | method | " + " | ".join(f"K={k}" for k in range(1, 9)) + " |",
            "|---|---|" + "---|" * 8]
    for s in keys:
        r = doc["results"][s.key]
        bound_k = r["ceiling"]["crlb"]["per_k"]
        out.append(f"| {s.label} | bound | " + " | ".join(
            _cell(bound_k.get(str(k))) for k in range(1, 9)) + " |")
        rows = [("fit", r["ceiling"]["fit"])] + [(m, r[m]["points"]) for m in models if m in r]
        for name, d in rows:
            cells = []
            for k in range(1, 9):
                ca = d["count_accuracy"].get(str(k))
                cells.append("—" if ca is None else
                             f"{_cell(d['per_k'][str(k)])} ({100 * ca['right']:.0f} %)")
            out.append(f"| {s.label} | {name} | " + " | ".join(cells) + " |")
    for title, field, fmt in (("nearest other target (px)", "by_separation", "{:.1f}"),
                              ("brightness (grey levels)", "by_brightness", "{:.0f}")):
        edges = SEPARATION_EDGES if field == "by_separation" else BRIGHTNESS_EDGES
        bins = [f"{fmt.format(lo)}–{'∞' if np.isinf(hi) else fmt.format(hi)}"
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        out += ["", f"## Recall within {RADIUS} px by {title}", "",
                "Fraction of the truths paired (×100), points mode; bound: their mean "
                "Cramér–Rao hit probability at that radius. Cells: recall (targets).", "",
                "| set | method | " + " | ".join(bins) + " |", "|---|---|" + "---|" * len(bins)]
        for s in keys:
            r = doc["results"][s.key]
            fit_rows = r["ceiling"]["fit"][field]
            out.append(f"| {s.label} | bound | " + " | ".join(
                f"{_cell(b['bound_recall'])} ({b['targets']})" for b in fit_rows) + " |")
            rows = [("fit", r["ceiling"]["fit"])] + [(m, r[m]["points"]) for m in models
                                                     if m in r]
            for name, d in rows:
                out.append(f"| {s.label} | {name} | " + " | ".join(
                    _cell(b["recall"]) for b in d[field]) + " |")
    out += ["", "## Rows", "", "Each row made by (the weights' sha256 and the extractor settings "
            "of every figure are in the JSON):", ""]
    out += [f"- {row}: `{cmd}`" for row, cmd in doc.get("row_commands", {}).items()
            if row in models]
    out += ["", "## Sets", "", f"Seeds and sizes: {doc['trajectories']} trajectories per set "
            f"generated (test split scored, first {doc.get('limit') or 'all'} trajectories); "
            "each made by the command shown if missing:", ""]
    out += [f"- {s.label}: `{s.command(Path(doc['data_root']), doc['trajectories'])}`"
            for s in keys]
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {s.key for s in SETS})
    if unknown:
        raise SystemExit(f"unknown set(s) {unknown}; choose from {[s.key for s in SETS]}")
    if (args.weights or args.extract) and not args.tag:
        raise SystemExit("--weights and --extract make rows of their own: name them with --tag")
    if args.weights and len(models) != 1:
        raise SystemExit(f"--weights belongs to one model, got --models {models}")
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    doc = json.loads(json_path.read_text()) if json_path.exists() else {"results": {}}
    root = Path(args.data_root)
    rows = {m: f"{m} {args.tag}" if args.tag else m for m in models}
    shown = list(dict.fromkeys([*doc.get("models", []), *rows.values()]))
    sets = [s.key for s in SETS if s.key in wanted or s.key in doc["results"]]
    flags = (f"--data-root {root} --trajectories {args.trajectories}"
             + (f" --limit-trajectories {args.limit_trajectories}"
                if args.limit_trajectories else ""))
    commands = doc.setdefault("row_commands", {})
    for m, row in rows.items():
        commands[row] = (f"python -m models generalization --models {m} {flags}"
                         + (f" --weights {args.weights}" if args.weights else "")
                         + "".join(f" --extract {e}" for e in args.extract)
                         + (f" --tag '{args.tag}'" if args.tag else ""))
    doc.update(
        command=(f"python -m models generalization --sets {','.join(sets)} {flags}, once per "
                 "row (commands below)"),
        models=shown, data_root=str(root), trajectories=args.trajectories,
        limit=args.limit_trajectories, commit=_git_commit(),
        machine={"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        seeds={s.key: s.seed for s in SETS},
    )
    ext_cfg = extractor_config(args.extract)
    extractor = dataclasses.asdict(ext_cfg)  # part of the resume key
    jobs = [(s, m) for s in SETS if s.key in wanted for m in [None, *models]]
    bar = tqdm(jobs, unit="job", disable=args.quiet)
    bounds: dict[str, dict] = {}
    datasets: dict[str, SeqDataset] = {}
    for family_set, model_name in bar:
        bar.set_description(f"{family_set.key} {model_name or 'ceiling'}")
        if family_set.key not in datasets:
            datasets[family_set.key] = load_test_split(
                ensure_set(family_set, root, args.trajectories), args.limit_trajectories)
        dataset = datasets[family_set.key]
        entry = doc["results"].setdefault(family_set.key, {})
        if model_name is None:
            kept = entry.get("ceiling", {})
            if kept.get("trajectories") != dataset.n_trajectories or "fit" not in kept:
                ceiling, bounds[family_set.key] = score_ceiling(dataset, family_set.noise)
                entry["ceiling"] = {**ceiling, "trajectories": dataset.n_trajectories}
            entry.update(windows=int(len(eval_windows(dataset)[2])), psf=family_set.psf,
                         noise=family_set.noise, preset=family_set.preset,
                         seed=family_set.seed)
        else:
            weights = Path(args.weights) if args.weights else default_weights(model_name)
            sha = sha256_file(weights) if weights.exists() else None
            row = rows[model_name]
            old = entry.get(row)
            if old and old.get("weights_sha256") == sha and old.get("trajectories") == \
                    dataset.n_trajectories and old.get("extractor") == extractor:
                continue
            if family_set.key not in bounds:
                frames = eval_windows(dataset)[2]
                bounds[family_set.key] = bound_of(dataset, window_parameters(dataset, frames),
                                                  family_set.noise)
            result = score_model(model_name, dataset, args.batch_size, bounds[family_set.key],
                                 Path(args.weights) if args.weights else None, ext_cfg)
            entry[row] = {**result, "model": model_name, "weights_sha256": sha,
                          "weights": str(weights), "extractor": extractor}
            bar.write(f"{family_set.key:11s} {row:10s} points "
                      f"{_cell(result['points']['cso']['mAP'])}  grid "
                      f"{_cell(result['grid']['mAP'])}  ({result['seconds']} s)")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2) + "\n")  # resumable
    out.write_text(markdown(doc))
    print(f"written to {out} and {json_path}")
    return 0
