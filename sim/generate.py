"""Generate a whole SeqCSIST-style dataset: train/val/test splits on disk plus a recipe.

The set is simulated in one go (:func:`sim.dataset.simulate`), so it is fully determined by
the seed, the rules (or the mixture of scene families, :mod:`sim.families`) and the imaging
(PSF σ, noise, shot-noise gain, backgrounds); it is then cut by trajectory into contiguous
blocks of 70/15/15 % (train = the first trajectories, then val, then test; trajectories are
independent draws, so a contiguous cut is a random cut). Each split holds at least one trajectory.
Output (``out`` = dataset root)::

    out/recipe.json                     arguments, seed, rules, families, imaging, counts,
                                        versions
    out/{train,val,test}/               official layout (format "seqcsist"), or
    out/{train,val,test}.npz            compact format (format "npz")
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sim.backgrounds import DEFAULT_AMPLITUDE, load_backgrounds
from sim.dataset import NPZ_VERSION, SeqDataset, save_npz, simulate
from sim.families import Family, as_families, rayleigh_px
from sim.geometry import RATIO, SIGMA
from sim.seqcsist_io import write_splits
from sim.trajectory import TrajectoryRules

SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
FORMATS = ("seqcsist", "npz")
PACKAGE = "csist-pipeline"
BACKGROUND_STREAM = 0xB6  # second entropy word of the background-crop random stream


def split_counts(n_trajectories: int) -> dict[str, int]:
    """Trajectories per split: round(15 %) for val and test (at least 1), the rest for train.

    5 000 trajectories give 3 500 / 750 / 750, as in SeqCSIST.
    """
    if n_trajectories < len(SPLIT_FRACTIONS):
        raise ValueError(
            f"need at least {len(SPLIT_FRACTIONS)} trajectories (one per split), "
            f"got {n_trajectories}"
        )
    counts = {
        name: max(1, round(frac * n_trajectories))
        for name, frac in SPLIT_FRACTIONS.items() if name != "train"
    }
    return {"train": n_trajectories - sum(counts.values()), **counts}


def package_version() -> str:
    """Installed version of this project, or ``"unknown (not installed)"``."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _check_out(out: Path, fmt: str) -> None:
    names = ["recipe.json"] + [f"{s}.npz" if fmt == "npz" else s for s in SPLIT_FRACTIONS]
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise FileExistsError(
            f"{out} already holds {', '.join(taken)}; choose a new --out or delete them"
        )


def _write_npz(out: Path, splits: dict[str, SeqDataset], progress: bool) -> None:
    total = sum(len(ds) for ds in splits.values())
    with tqdm(total=total, unit="frame", desc="writing", disable=not progress) as bar:
        for name, ds in splits.items():
            save_npz(out / f"{name}.npz", ds)
            bar.update(len(ds))


def generate(
    out: str | Path,
    n_trajectories: int,
    seed: int,
    fmt: str = "seqcsist",
    rules: TrajectoryRules | Sequence[Family] | None = None,
    noise_sigma: float = 0.0,
    backgrounds: str | Path | None = None,
    background_amplitude: float = DEFAULT_AMPLITUDE,
    workers: int = 2,
    progress: bool = True,
    sigma: float = SIGMA,
    gain: float = 0.0,
    preset: str | None = None,
) -> dict:
    """Simulate ``n_trajectories`` trajectories and write train/val/test under ``out``.

    Parameters
    ----------
    out : path
        Dataset root (created if missing; must not already hold the outputs).
    n_trajectories : int
        Total trajectories (≥ 3); SeqCSIST has 5 000 (100 000 frames).
    seed : int
        Seed of every random draw; the same arguments give the same data.
    fmt : {"seqcsist", "npz"}
        Official PNG + XML layout or the compact single-file format.
    rules : TrajectoryRules or sequence of Family, optional
        Trajectory rules (layout, target-count range, brightness, motion, …) or a weighted
        mixture of scene families (:mod:`sim.families`); default the paper's rules.
    noise_sigma : float
        Std of additive white Gaussian noise in grey levels (paper Table V); 0 = none.
    backgrounds : path, optional
        Folder of background images (Table IV); one random crop per trajectory
        (:mod:`sim.backgrounds`).
    background_amplitude : float
        Grey levels that an image's full scale maps to.
    workers : int
        Writer processes for the official layout.
    progress : bool
        Show a progress bar on stderr.
    sigma : float
        PSF std in LR pixels: renders the frames, is written into every annotation's
        ``sigma`` and the npz files, and sets the "pixel" layout's Rayleigh unit.
    gain : float
        Grey levels per photo-electron of Poisson shot noise (0: none).
    preset : str, optional
        Name of the preset the families came from, recorded in the recipe.

    Returns
    -------
    dict
        The recipe, also written to ``out/recipe.json``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    if noise_sigma < 0:
        raise ValueError(f"noise sigma must be >= 0 grey levels, got {noise_sigma}")
    if not 0.2 <= sigma <= 2.0:
        raise ValueError(f"PSF sigma {sigma} px is outside 0.2..2.0 px; a point target's PSF "
                         "on this sensor model is a fraction of a pixel to a few pixels wide")
    families = as_families(rules)
    rules = families[0].rules
    counts = split_counts(n_trajectories)
    out = Path(out)
    _check_out(out, fmt)
    out.mkdir(parents=True, exist_ok=True)

    bg = None
    if backgrounds is not None:
        rng = np.random.default_rng([seed, BACKGROUND_STREAM])
        bg = load_backgrounds(
            backgrounds, n_trajectories, rng, rules.patch, background_amplitude
        )
    ds = simulate(n_trajectories, seed, families, noise_sigma=noise_sigma, backgrounds=bg,
                  sigma=sigma, gain=gain)
    splits, start = {}, 0
    for name, n in counts.items():
        splits[name] = ds.subset(np.arange(start, start + n))
        start += n

    if fmt == "npz":
        _write_npz(out, splits, progress)
    else:
        write_splits(out, splits, workers=workers, progress=progress)

    recipe = {
        "package": PACKAGE,
        "version": package_version(),
        "numpy": np.__version__,
        "arguments": {
            "n_trajectories": n_trajectories,
            "seed": seed,
            "format": fmt,
            "noise_sigma": noise_sigma,
            "gain": gain,
            "backgrounds": None if backgrounds is None else str(backgrounds),
            "background_amplitude": background_amplitude,
            "psf_sigma": sigma,
            "preset": preset,
        },
        "seed": seed,
        "rules": dataclasses.asdict(rules),
        "families": [
            {"name": f.name, "weight": f.weight, "rules": dataclasses.asdict(f.rules)}
            for f in families
        ],
        "imaging": {
            "psf_sigma_px": sigma,
            "rayleigh_unit_px": rayleigh_px(sigma),
            "hr_ratio": RATIO,
            "noise": {"gaussian_sigma": noise_sigma, "shot_gain": gain,
                      "model": "gain * Poisson(level / gain) + N(0, sigma^2), then uint8"},
            "uint8": "round to nearest (ties to even), saturate to 0..255",
        },
        "split": {
            "fractions": SPLIT_FRACTIONS,
            "method": "contiguous blocks of trajectories in generation order: train, val, test",
        },
        "counts": {
            name: {"trajectories": n, "frames": n * rules.frames} for name, n in counts.items()
        },
        "files": {
            name: f"{name}.npz" if fmt == "npz" else f"{name}/" for name in counts
        },
        "npz_version": NPZ_VERSION if fmt == "npz" else None,
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return recipe
