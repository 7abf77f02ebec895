"""``python -m models calibrate DATA``: the sensor profile (PSF σ, noise σ, saturation) of data.

The PSF σ comes from the isolated targets in the data, as a localisation microscope is
calibrated on sparse beads: every sampled window (5 frames of one patch sequence) is fitted
with one moving target of free σ on a flat background (:func:`fit_spot`: Levenberg–Marquardt
on position, velocity, brightness, background and σ, the window model of
:mod:`models.ceiling`); a fit whose reduced χ² is at most ``max_chi2`` (with the window's own
noise estimate) is a lone point source, while a blend of several targets fits one Gaussian
badly and is left out. Blends that pass (under noise they hide better) only widen the spot, so
the estimate is the *shorth* mode of the kept σ values (the middle of the narrowest interval
holding half of them), robust to that one-sided tail; its uncertainty is the std of the same
estimate over bootstrap resamples. The noise σ is the median of the extractor's per-window
estimate (:func:`models.extract.estimate_noise`); the saturation level is the largest pixel
value when at least :data:`SATURATED_FRACTION` of the pixels sit at it.

It reads anything :func:`sim.load_dataset` reads (a dataset root with ``--split``, a split
folder of the official layout, an npz file), and prints the profile as YAML to paste.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.ceiling import levenberg_marquardt, render_window
from models.extract import estimate_noise
from models.protocol import eval_windows
from sim import load_dataset

#: A pixel value is the saturation level when at least this fraction of pixels sit at it.
SATURATED_FRACTION = 1e-3
#: Bootstrap resamples of the σ estimate's uncertainty.
RESAMPLES = 200
#: The automatic χ² threshold: CHI2_FACTOR × the CHI2_QUANTILE quantile of the bright fits'.
CHI2_FACTOR, CHI2_QUANTILE = 3.0, 0.02
#: Largest std (px) of a kept spot's σ: fainter spots cannot tell a blend from one target.
MAX_SIGMA_STD = 0.01
#: σ's finite-difference step (px) and its allowed range in the fits.
SIGMA_STEP, SIGMA_RANGE = 1e-4, (0.2, 2.0)


def fit_spot(window: np.ndarray, sigma0: float = 0.5, iterations: int = 30) -> np.ndarray:
    """One moving target of free PSF σ on a flat background, fitted to a window.

    Levenberg–Marquardt (:func:`models.ceiling.levenberg_marquardt`), σ by a finite
    difference.

    Parameters
    ----------
    window : ndarray of shape (T, P, P)
        Frames (grey levels).

    Returns
    -------
    ndarray (10,): row, col, v_row, v_col, brightness, background, σ, χ² (unit pixel
    variance), the number of pixels fitted (those below the window's maximum when it clips
    there) and σ's std per unit pixel noise (from the fit's curvature).
    """
    y = np.asarray(window, dtype=np.float64)
    frames, patch = y.shape[0], y.shape[-1]
    level = float(np.median(y))
    light = np.clip(y[frames // 2] - level, 0, None)
    total = max(light.sum(), 1e-9)
    grid = np.arange(patch, dtype=np.float64)
    theta = np.array([light.sum(axis=1) @ grid / total, light.sum(axis=0) @ grid / total,
                      0.0, 0.0, total, level, sigma0])
    keep = ((y < y.max()) | (y.max() < 255)).ravel().astype(np.float64)  # a clipped peak
    # says nothing of the spot's shape

    def residuals(t):
        model, jac = render_window(t[:5], t[6], patch, frames)
        up = render_window(t[:5], t[6] + SIGMA_STEP, patch, frames)[0]
        d_sigma = (up - model).ravel() / SIGMA_STEP
        jac = np.column_stack([jac, np.ones(jac.shape[0]), d_sigma])
        return (y - model - t[5]).ravel(), jac, keep

    def converged(step):
        return abs(step[6]) < 1e-6 and np.abs(step[:2]).max() < 1e-6

    def inside(t):
        t[6] = np.clip(t[6], *SIGMA_RANGE)
        return t

    theta, cost, jac, weight = levenberg_marquardt(residuals, theta, converged, iterations,
                                                   inside)
    spread = float(np.sqrt(max(np.linalg.pinv((jac.T * weight) @ jac)[6, 6], 0.0)))
    return np.concatenate([theta, [cost, keep.sum(), spread]])


def shorth_mode(values: np.ndarray) -> float:
    """Middle of the narrowest interval holding half of ``values`` (at least one)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    half = max(len(v) // 2, 1)
    widths = v[half - 1:] - v[:len(v) - half + 1]
    i = int(np.argmin(widths))
    return float(0.5 * (v[i] + v[i + half - 1]))


def saturation_level(images: np.ndarray) -> float | None:
    """The largest pixel value if at least SATURATED_FRACTION of the pixels sit at it, else
    None (no clipping seen)."""
    top = float(images.max())
    return top if np.mean(images == top) >= SATURATED_FRACTION else None


def calibrate(images_windows: np.ndarray, images: np.ndarray, max_chi2: float | None = None,
              seed: int = 0) -> dict:
    """The profile of windows (N, T, P, P) sampled from ``images`` (the data's pixels).

    Returns a dict: ``psf_sigma`` and ``psf_sigma_std`` (px), ``spots`` (fits kept),
    ``windows``, ``noise_sigma`` (grey levels), ``saturation`` (or None).
    """
    noise = estimate_noise(images_windows, floor=0.29)
    fits = np.array([fit_spot(w) for w in images_windows])
    sigma, chi2, n_pix = fits[:, 6], fits[:, 7], fits[:, 8]
    spread = fits[:, 9] * noise
    bright = fits[:, 4] > 10 * noise  # a spot that stands out of the noise
    reduced = chi2 / np.maximum(n_pix - 7, 1) / noise**2
    inside = (sigma > SIGMA_RANGE[0] + 0.01) & (sigma < SIGMA_RANGE[1] - 0.01)
    if max_chi2 is None and (bright & inside).any():
        max_chi2 = CHI2_FACTOR * float(np.quantile(reduced[bright & inside], CHI2_QUANTILE))
    ok = bright & inside & (reduced <= (max_chi2 or 0.0)) & (spread <= MAX_SIGMA_STD)
    kept = sigma[ok]
    if len(kept) < 5:
        raise ValueError(
            f"only {len(kept)} of {len(images_windows)} windows show a lone point source; "
            "calibrate on data with isolated targets (or set a larger --max-chi2)")
    rng = np.random.default_rng(seed)
    picks = [rng.integers(len(kept), size=len(kept)) for _ in range(RESAMPLES)]
    boot = [shorth_mode(kept[i]) for i in picks]
    return {"psf_sigma": shorth_mode(kept), "psf_sigma_std": float(np.std(boot)),
            "spots": int(len(kept)), "windows": int(len(images_windows)),
            "noise_sigma": float(np.median(noise)), "saturation": saturation_level(images),
            "max_chi2": max_chi2}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset root (with --split), split folder or .npz file")
    p.add_argument("--split", default="test", help="split of a dataset root (default test)")
    p.add_argument("--windows", type=int, default=2000,
                   help="windows sampled evenly from the data (default %(default)s)")
    p.add_argument("--max-chi2", type=float,
                   help="largest reduced χ² of a lone-spot fit that is kept (default: "
                        "3 × the 2 %% quantile of the bright fits')")
    p.add_argument("--out", help="also write the figures as JSON to this file")


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data, args.split if Path(args.data).is_dir() and not
                           (Path(args.data) / "image").is_dir() else None)
    windows, _, _ = eval_windows(dataset)
    pick = np.unique(np.linspace(0, len(windows) - 1, min(args.windows, len(windows)))
                     .astype(np.int64))
    result = calibrate(windows[pick], dataset.images, args.max_chi2)
    stated = getattr(dataset, "sigma", None)
    print(f"# {result['spots']} lone spots of {result['windows']} windows; the data state "
          f"sigma = {stated:g}" if stated is not None else "")
    sat = result["saturation"]
    print("sensor:")
    print(f"  psf_sigma: {result['psf_sigma']:.3f}      # ± {result['psf_sigma_std']:.3f} px")
    print(f"  noise_sigma: {result['noise_sigma']:.2f}     # grey levels, median per window")
    print(f"  saturation: {sat:g}" if sat is not None else "  saturation: null     # no "
          "clipping seen")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0
