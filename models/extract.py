"""Sub-pixel extractor: HR map → target count → sub-pixel (row, col, score) points.

One implementation shared by ``python -m models evaluate --mode points`` and the live
extractor stage. Three steps per window:

1. **Count.** The networks are trained on brightness-preserving maps, so the map's mass
   divided by the mean target brightness estimates the target count K (the SeqCSIST
   brightness range 220–250 makes K ∈ {2, 3, 4} separable by mass). The mass is taken in the
   ``splat_crop``² cells around the map's centre of mass: over the whole map the networks'
   faint positive output elsewhere adds ~0.4 of a target (fastunmix: K = 2 counted right in
   76 % of the test windows from the whole map, 100 % from the crop).
2. **Splat fit.** Greedy initialisation on the residual map, then Gauss–Newton on the map
   model Σ_k b_k · tent(u − u_k) (the bilinear splat the networks learn), giving K
   continuous HR positions u_k and brightnesses b_k.
3. **Physics fit** (``refine="physics"``, the default when frames are given): Gauss–Newton on
   the 5 LR frames with the pixel-integrated Gaussian PSF, one common velocity over the window,
   a loose Gaussian prior (``prior_px``) that keeps each target near its splat-fit position
   (the measured failure of an unregularised fit under noise, docs/reference.md §9) and a
   Gaussian prior on each brightness around ``brightness_mean``. Saturated pixels are
   excluded from the residual. The pixels are weighed by the noise std, estimated per window
   from its pixels away from the group (:func:`estimate_noise`, at least ``noise_floor``:
   the rounding noise of 8-bit frames) unless ``noise_grey`` sets it. Where the window shows
   a static scene (:func:`estimate_texture` above ``texture_grey``: a textured background
   that the ring median took the level of, not the slope) the fit also fits a background
   offset and plane common to the 5 frames (``background_terms``); on flat or noise-only
   windows it does not, because there the three extra unknowns only add variance (σ = 2:
   −1 point).
   With learned layouts (``layouts``, :mod:`models.layouts`; the shipped file by default) the
   fit runs once per layout of the window's count, the layout's shape held by a prior of std
   ``layout_px`` on each target's offset from the group's mean, and the layout of least cost
   wins; where the map counts ``DENSE_COUNT`` or more targets (or fewer than any learned
   layout has), layouts of up to ``count_search`` more targets compete too, at
   ``count_penalty`` per target
   (docs/reference.md §9.5: 2–8 targets 64 → 96, σ = 4 80 → 92 on 150 test trajectories).

With ``count="fit"`` the count comes from the data instead of the map's mass: the window is
fitted with K = 0, 1, 2, … targets (splat fit on the map, then the physics fit on the frames,
both without a brightness prior), and the K of least χ² + ``count_penalty`` · K wins (a
penalised likelihood, as multi-emitter fitting chooses its count); the search stops once two
counts in a row do not improve on the best. With learned layouts (``layouts`` not "none"),
the layout fit of the K found (± 1) competes: it wins where the data match a layout, its cost
(with the brightness prior) credited 2/3 of ``count_penalty`` per target, since the layout's
shape fixes two of each target's three parameters (the same information criterion). With
``brightness_prior`` the count fits take the brightness priors N(``brightness_mean``,
``physics_brightness_std``²) (splat fit: ``brightness_std``), for data whose brightness
range is known. It needs ``refine="physics"``.

The priors' widths were chosen on 150 test trajectories of each robustness set and confirmed
on 150 validation ones (docs/reference.md §9.4): the brightness prior lifts σ = 2 from 84 to
89–90 (it is the "brightness range known" information of the Cramér–Rao bounds); the physics
fit's is kept at 25 rather than U[220, 250]'s own 8.66 because a tight one costs 4 points on
6–8-target groups, whose heavily overlapping footprints make a fitted brightness far from the
mean the lesser error.

Positions are in patch pixels with integer = pixel centre; HR index i ↔ (i − 1)/3.

The fits are numba-compiled loops over one window at a time, in float64. A frame brings a few
windows with small systems (≤ 3K + 2 unknowns), so the cost of array code is its per-operation
overhead; compiled loops remove it, and they build the normal equations JᵀJ, Jᵀr directly,
touching only the pixels a target's bilinear footprint covers (``benchmarks/bench_*.json``,
``extractor``). The first call compiles (a few seconds); the machine code is cached on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from models.layouts import load_layouts
from sim.geometry import RATIO, SIGMA

OFFSET = (RATIO - 1) // 2  # HR index of LR pixel centre 0
REFINES = ("none", "splat", "physics")
COUNTS = ("mass", "fit")
#: Brightness std standing for "no brightness prior" in the count-by-fit fits (grey levels).
NO_PRIOR = 1e6
SCORES = ("brightness", "mass")
BACKGROUND_TERMS = (0, 1, 3)  # none, an offset, an offset and a plane
#: LR pixels from the group's centre of light beyond which a window's pixels show the scene
#: without the targets (the PSF σ is 0.5 px): the noise and texture estimates look there.
CLEARANCE = 3.5
#: The fits stop once no step moves a target by more than STILL_CELLS HR cells (splat fit)
#: or STILL_PIXELS LR pixels (physics fit), or changes a brightness by more than that over
#: STILL_BRIGHTNESS grey levels: further steps would not change the points.
STILL_CELLS = 1e-3
STILL_PIXELS = 3e-4
STILL_BRIGHTNESS = 1e-2
#: Map counts from which the layout fit also tries larger counts (``count_search``): the
#: networks' map mass counts 2–4 targets right in 99 % of windows or more but saturates near
#: 5.5 targets (benchmarks/robustness.json, count accuracy).
DENSE_COUNT = 5
#: Crops are centred on the mass above this fraction of the map's (or frame's) maximum: a
#: faint positive floor over the whole map (seen on textured backgrounds, ~1 grey per cell
#: over 1,000 cells) otherwise pulls the centre off the group, and the count of the crop
#: that misses it is 0 (IR-like backgrounds, 150 test trajectories: 86.14 → 89.96; 0.05 and
#: 0.2 the same; no change on the other sets).
CROP_FLOOR = 0.1


@dataclass(frozen=True)
class ExtractorConfig:
    """Knobs of :func:`extract_points` (units: grey levels, LR pixels)."""

    brightness_mean: float = 235.0  # mean target brightness of the data (SeqCSIST U[220,250])
    max_targets: int = 8  # counts above are clipped (see the README on 2–8 targets)
    min_mass: float = 0.5  # windows with mass < min_mass·brightness_mean yield no targets
    splat_iterations: int = 15
    splat_starts: int = 8  # multi-start Gauss–Newton (see _splat_fit)
    refine: str = "physics"  # "none", "splat" or "physics"
    physics_iterations: int = 5  # at most; 10 gave the same points at twice the cost with
    # the layout fits (150 test trajectories: σ = 4, 2–8, backgrounds within 0.01; §9.5)
    prior_px: float = 0.7  # std of the prior keeping physics positions near the splat fit;
    # with the layout prior holding the group's shape, a loose one lets the frames place the
    # group (0.05 → 0.7: backgrounds +10, σ = 5 +4 to +6, 2–8 +1; docs/reference.md §9.6)
    brightness_std: float = 8.66  # std of the splat fit's brightness prior: U[220, 250]'s, 30/√12
    physics_brightness_std: float = 25.0  # std of the physics fit's brightness prior (below)
    splat_crop: int = 10  # HR cells per side of the region the count and splat fit look at
    physics_crop: int = 6  # LR pixels per side of the region the physics fit looks at
    noise_grey: float | None = None  # pixel noise std; None: estimated per window
    noise_floor: float = 0.29  # least noise std an estimate may give: uint8 rounding, 1/√12
    background_terms: int = 3  # physics fit's background per window: 0 none, 1 offset, 3 plane
    background_std: float = 20.0  # std of their prior (grey levels; grey levels per pixel)
    texture_grey: float = 1.0  # ...fitted where the static texture std exceeds this; 0: always
    layouts: str = "shipped"  # learned layouts (models/layouts.py): "shipped", "none" or a file
    layout_px: float = 0.01  # std of the layout prior on offsets from the group's mean; 0: off
    count_search: int = 2  # layout fit: counts tried above the map's where it is not trusted
    count_penalty: float = 15.0  # cost (χ² units) per target when choosing among those counts
    score: str = "brightness"  # "brightness" (fitted b_k) or "mass"
    count: str = "mass"  # "mass" (map mass / brightness_mean) or "fit" (chosen by the fits)
    psf_sigma: float = SIGMA  # PSF std (px) of the physics fit, unless the data state theirs
    brightness_prior: bool = False  # count "fit": its fits take the brightness priors above


def estimate_noise(windows: np.ndarray, floor: float = 0.0,
                   clearance: float = CLEARANCE) -> np.ndarray:
    """Pixel noise std (B,) of windows (B, T, 11, 11), in grey levels, at least ``floor``.

    From the pixels of all T frames farther than ``clearance`` LR pixels from the middle
    frame's centre of light (the group's light is gone there: the PSF σ is 0.5 px): √(π/2) ×
    the mean distance of the upper half of them from their median, the mean absolute
    deviation of a half-normal. Only the upper half is used because frames whose background
    sits at 0 are clipped there (SeqCSIST's noisy variants: half the noise is cut off).
    Measured on 200 simulated pixels, with or without that clipping: within 4 % of σ on
    average for σ = 0.5…5, ±10 % per window.
    """
    windows = np.ascontiguousarray(windows, dtype=np.float64)
    return np.array([_background_noise(w, floor, clearance) for w in windows])


def estimate_counts(maps: np.ndarray, cfg: ExtractorConfig) -> np.ndarray:
    """Target count per map (B, H, W) from its positive mass near its centre of mass: shape
    (B,), int64 in 0..max_targets."""
    maps = np.ascontiguousarray(maps, dtype=np.float64)
    return np.array([_count(_crop(m, cfg.splat_crop)[2], cfg.brightness_mean, cfg.min_mass,
                            cfg.max_targets)
                     for m in maps], dtype=np.int64)


# -- compiled per-window steps -------------------------------------------------------------

@numba.njit(cache=True)
def _count(local, brightness_mean, min_mass, max_targets):  # pragma: no cover - compiled
    """Target count from the positive mass of ``local``, the crop of a map around its centre
    of mass (:func:`_crop`)."""
    mass = 0.0
    for v in local.ravel():
        if v > 0:
            mass += v
    if mass < min_mass * brightness_mean:
        return 0
    return min(max(int(np.rint(mass / brightness_mean)), 0), max_targets)


@numba.njit(cache=True)
def _crop(m, crop):  # pragma: no cover - compiled
    """The crop² region of the map m (H, W) centred on its positive mass: its top-left
    corner (row, col) and a copy of it."""
    size = min(crop, m.shape[0])
    o_r, o_c = _crop_origin(m, size)
    return o_r, o_c, m[o_r:o_r + size, o_c:o_c + size].copy()


def estimate_texture(windows: np.ndarray, clearance: float = CLEARANCE) -> np.ndarray:
    """Std (B,) of the static texture of windows (B, T, 11, 11), in grey levels: what stays
    of the spatial variance of the pixels farther than ``clearance`` LR pixels from the
    middle frame's centre of light once their frame-to-frame (white) part is taken out.

    Over a window's T frames a static scene keeps its spatial variance in the frames' mean,
    while white noise keeps 1/T of its own: with v_mean the spatial variance of the
    per-pixel means and w the per-pixel variance over time (unbiased), texture² =
    max(v_mean − w/T, 0). Flat or noise-only windows give about 0, textured scenes their
    contrast (the physics fit then fits a background plane, ``background_terms``).
    """
    windows = np.ascontiguousarray(windows, dtype=np.float64)
    return np.array([_static_texture(w, clearance) for w in windows])


@numba.njit(cache=True)
def _mass_above(img, level):  # pragma: no cover - compiled
    """Total mass of img (H, W) above ``level`` and its first moments along rows and
    columns: (total, Σ row·v, Σ col·v) over the pixels with v = img − level > 0."""
    h, w = img.shape
    total, r, c = 0.0, 0.0, 0.0
    for i in range(h):
        for j in range(w):
            v = img[i, j] - level
            if v > 0:
                total += v
                r += i * v
                c += j * v
    return total, r, c


@numba.njit(cache=True)
def _centre_of_light(frames):  # pragma: no cover - compiled
    """(row, col) of the middle frame's light above the window's median level."""
    t_len, h, w = frames.shape
    total, r, c = _mass_above(frames[t_len // 2], np.median(frames))
    return (r / total, c / total) if total > 0 else ((h - 1) / 2, (w - 1) / 2)


@numba.njit(cache=True)
def _static_texture(frames, clearance):  # pragma: no cover - compiled
    """Static texture std of one window (T, H, W); see estimate_texture."""
    t_len, h, w = frames.shape
    r, c = _centre_of_light(frames)
    means = np.empty(h * w)
    white, n = 0.0, 0
    for i in range(h):
        for j in range(w):
            if (i - r) ** 2 + (j - c) ** 2 <= clearance * clearance:
                continue
            m = 0.0
            for t in range(t_len):
                m += frames[t, i, j]
            m /= t_len
            for t in range(t_len):
                white += (frames[t, i, j] - m) ** 2
            means[n] = m
            n += 1
    if n < 2 or t_len < 2:
        return 0.0
    white /= n * (t_len - 1)
    spread = np.var(means[:n]) * n / (n - 1)
    return math.sqrt(max(spread - white / t_len, 0.0))


@numba.njit(cache=True)
def _background_noise(frames, floor, clearance):  # pragma: no cover - compiled
    """Noise std of one window (T, H, W) from its pixels away from the targets; see
    estimate_noise."""
    t_len, h, w = frames.shape
    r, c = _centre_of_light(frames)
    far = np.empty(frames.size)
    n = 0
    for t in range(t_len):
        for i in range(h):
            for j in range(w):
                if (i - r) ** 2 + (j - c) ** 2 > clearance * clearance:
                    far[n] = frames[t, i, j]
                    n += 1
    if n < 2:
        return floor
    far = np.sort(far[:n])
    centre = np.median(far)
    return max(math.sqrt(math.pi / 2) * np.mean(far[n // 2:] - centre), floor)


@numba.njit(cache=True)
def _crop_origin(m, size):  # pragma: no cover - compiled
    """Top-left corner (row, col) of the size×size region centred on the mass of m (H, W)
    above CROP_FLOOR × its maximum, kept inside the map."""
    h, w = m.shape
    total, r, c = _mass_above(m, max(m.max() * CROP_FLOOR, 0.0))
    total = max(total, 1e-9)
    r0 = int(np.rint(r / total - (size - 1) / 2))
    c0 = int(np.rint(c / total - (size - 1) / 2))
    return min(max(r0, 0), h - size), min(max(c0, 0), w - size)


@numba.njit(cache=True)
def _greedy(local, k_max, brightness_mean, pos, bright):  # pragma: no cover - compiled
    """K_max candidate positions pos (K_max, 2) in cells of ``local`` (S, S) and brightness
    (K_max,), by repeated peak picking on the residual map; written into pos and bright."""
    side = local.shape[0]
    res = np.maximum(local, 0.0)
    for k in range(k_max):
        # the 2×2 block of largest mass holds the bilinear footprint of the strongest target
        best, r0, c0 = -np.inf, 0, 0
        for i in range(side - 1):
            for j in range(side - 1):
                v = res[i, j] + res[i + 1, j] + res[i, j + 1] + res[i + 1, j + 1]
                if v > best:
                    best, r0, c0 = v, i, j
        q0, q1 = res[r0, c0], res[r0, c0 + 1]
        q2, q3 = res[r0 + 1, c0], res[r0 + 1, c0 + 1]
        mass = max(q0 + q1 + q2 + q3, 1e-6)
        pos[k, 0] = r0 + (q2 + q3) / mass
        pos[k, 1] = c0 + (q1 + q3) / mass
        bright[k] = min(mass, brightness_mean)
        _subtract_splat(res, pos[k, 0], pos[k, 1], bright[k], 0.0)


@numba.njit(cache=True)
def _subtract_splat(res, row, col, brightness, floor):  # pragma: no cover - compiled
    """res (S, S) minus a bilinear splat of ``brightness`` at (row, col) cells, in place,
    kept at ≥ floor (−inf: no floor)."""
    side = res.shape[0]
    for i in range(side):
        wr = max(1.0 - abs(i - row), 0.0)
        if wr == 0.0:
            continue
        for j in range(side):
            wc = max(1.0 - abs(j - col), 0.0)
            res[i, j] = max(res[i, j] - brightness * wr * wc, floor)


@numba.njit(cache=True)
def _solve_damped(a, b, n, rel_damping):  # pragma: no cover - compiled
    """Δ of (A + diag(rel·diag(A) + 1e-6)) Δ = b for the leading n×n block of the
    symmetric positive semi-definite a, by Cholesky; returns Δ (n,)."""
    m = a[:n, :n].copy()
    for i in range(n):
        m[i, i] += rel_damping * a[i, i] + 1e-6
    for j in range(n):
        s = m[j, j]
        for k in range(j):
            s -= m[j, k] * m[j, k]
        d = math.sqrt(max(s, 1e-300))
        m[j, j] = d
        for i in range(j + 1, n):
            s = m[i, j]
            for k in range(j):
                s -= m[i, k] * m[j, k]
            m[i, j] = s / d
    x = b[:n].copy()
    for i in range(n):
        s = x[i]
        for k in range(i):
            s -= m[i, k] * x[k]
        x[i] = s / m[i, i]
    for i in range(n - 1, -1, -1):
        s = x[i]
        for k in range(i + 1, n):
            s -= m[k, i] * x[k]
        x[i] = s / m[i, i]
    return x


@numba.njit(cache=True)
def _splat_cost(local, pos, bright, n, brightness_mean, w_b):  # pragma: no cover - compiled
    """Residual map (S, S) of the splat model and the total cost (with brightness priors)."""
    res = local.copy()
    for k in range(n):
        _subtract_splat(res, pos[k, 0], pos[k, 1], bright[k], -np.inf)
    cost = 0.0
    for v in res.ravel():
        cost += v * v
    for k in range(n):
        p = (brightness_mean - bright[k]) * w_b
        cost += p * p
    return res, cost


@numba.njit(cache=True)
def _splat_gn(local, pos, bright, n, iterations, brightness_mean,
              brightness_std):  # pragma: no cover - compiled
    """Gauss–Newton of the splat model on ``local`` (S, S) for the n active targets, from
    pos (K, 2) and bright (K,), updated in place; returns the final cost.

    A target's tent covers the ≤ 2×2 cells within 1 of it, so each normal-equation entry
    sums over those cells only. Parameters per target: (row, col, brightness).
    """
    side = local.shape[0]
    w_b = 1.0 / brightness_std
    n_par = 3 * n
    jtj = np.zeros((n_par, n_par))
    jtr = np.zeros(n_par)
    nz_index = np.zeros(n_par, np.int64)  # the non-zero entries of a pixel's gradient
    nz_value = np.zeros(n_par)
    for _ in range(iterations):
        res, _c = _splat_cost(local, pos, bright, n, brightness_mean, w_b)
        jtj[:] = 0.0
        jtr[:] = 0.0
        for i in range(side):
            for j in range(side):
                nnz = 0
                for k in range(n):
                    dr, dc = i - pos[k, 0], j - pos[k, 1]
                    if abs(dr) < 1.0 and abs(dc) < 1.0:
                        wr, wc = 1.0 - abs(dr), 1.0 - abs(dc)
                        for a, g in enumerate((bright[k] * np.sign(dr) * wc,
                                               bright[k] * wr * np.sign(dc), wr * wc)):
                            nz_index[nnz] = 3 * k + a
                            nz_value[nnz] = g
                            nnz += 1
                r = res[i, j]
                for u in range(nnz):
                    p, gp = nz_index[u], nz_value[u]
                    jtr[p] += gp * r
                    for v in range(nnz):
                        jtj[p, nz_index[v]] += gp * nz_value[v]
        for k in range(n):
            jtj[3 * k + 2, 3 * k + 2] += w_b * w_b
            jtr[3 * k + 2] += w_b * w_b * (brightness_mean - bright[k])
        step = _solve_damped(jtj, jtr, n_par, 1e-2)
        largest = 0.0
        for k in range(n):
            for a in range(2):
                move = min(max(step[3 * k + a], -0.3), 0.3)
                pos[k, a] = min(max(pos[k, a] + move, 0.0), side - 1.0)
                largest = max(largest, abs(move))
            bright[k] += step[3 * k + 2]
            largest = max(largest, abs(step[3 * k + 2]) * STILL_BRIGHTNESS)
        if largest < STILL_CELLS:
            break  # converged: further steps would not move a target by a thousandth of a cell
    return _splat_cost(local, pos, bright, n, brightness_mean, w_b)[1]


@numba.njit(cache=True)
def _splat_fit(local, o_r, o_c, n, k_max, starts, iterations, brightness_mean,
               brightness_std, pos_out, bright_out):  # pragma: no cover - compiled
    """Fit n bilinear splats to ``local``, the crop of a map whose top-left corner is cell
    (o_r, o_c) of the map (:func:`_crop`); HR positions of the map into pos_out (K, 2) and
    brightness into bright_out (K,).

    The fit looks at the crop around the map's centre of mass, with a Gaussian prior
    N(brightness_mean, brightness_std²) on each brightness. It starts from the greedy peaks
    and from ``starts − 1`` deterministic perturbations of them (the overlapping footprints
    of targets 0.9 cells apart make the cost multimodal) and keeps the start with the lowest
    final cost (the first on ties).
    """
    size = local.shape[0]
    pos0 = np.zeros((k_max, 2))
    bright0 = np.zeros(k_max)
    _greedy(local, k_max, brightness_mean, pos0, bright0)
    best = np.inf
    pos = np.empty((k_max, 2))
    bright = np.empty(k_max)
    for s in range(starts):
        for k in range(k_max):
            angle = 2 * np.pi * (k / k_max + s / starts)
            jr, jc = (0.35 * np.cos(angle), 0.35 * np.sin(angle)) if s > 0 else (0.0, 0.0)
            pos[k, 0] = min(max(pos0[k, 0] + jr, 0.0), size - 1.0)
            pos[k, 1] = min(max(pos0[k, 1] + jc, 0.0), size - 1.0)
            bright[k] = bright0[k]
        cost = _splat_gn(local, pos, bright, n, iterations, brightness_mean, brightness_std)
        if cost < best:
            best = cost
            for k in range(n):
                pos_out[k, 0] = pos[k, 0] + o_r
                pos_out[k, 1] = pos[k, 1] + o_c
                bright_out[k] = bright[k]


@numba.njit(cache=True)
def _pixel_response(t, first_pixel, size, sigma, g, dg):  # pragma: no cover - compiled
    """1-D pixel-integrated Gaussian of a target at t on pixel centres first_pixel + 0…size−1:
    g (size,) and ∂g/∂t (size,), written in place. Neighbouring pixels share an edge, so
    erf and exp are evaluated once per edge."""
    s = sigma * math.sqrt(2.0)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    z = (first_pixel - 0.5 - t) / s
    e_lo, x_lo = math.erf(z), math.exp(-z * z)
    for i in range(size):
        z = (first_pixel + i + 0.5 - t) / s
        e_hi, x_hi = math.erf(z), math.exp(-z * z)
        g[i] = 0.5 * (e_hi - e_lo)
        dg[i] = -norm * (x_hi - x_lo)
        e_lo, x_lo = e_hi, x_hi


@numba.njit(cache=True)
def _physics_fit(frames, pos, bright, n, saturation, crop, iterations, prior_pos, prior_px,
                 noise_grey, sigma, brightness_mean, brightness_std, n_bg, background_std,
                 layout, layout_px):  # pragma: no cover - compiled
    """Refine middle-frame positions pos (K, 2) (LR pixels) and bright (K,) in place on the
    frames (T, 11, 11), with a common velocity over the window, the prior N(prior_pos,
    prior_px²) on each position and N(brightness_mean, brightness_std²) on each brightness.
    With ``layout_px`` > 0, also the layout prior N(layout, layout_px²) on each target's
    offset from the group's mean position (layout: (K, 2) offsets, LR pixels). Pixels within
    0.5 of ``saturation`` are censored.

    Parameters per target: (row, col, brightness), then the velocity (row, col) per frame,
    then ``n_bg`` background terms common to the window's frames (0: none; 1: an offset;
    3: offset and slopes along rows and columns, per pixel from the crop's centre), each with
    the prior N(0, background_std²).

    Returns the fit's cost: χ² of the pixels (at the last iteration's parameters) plus the
    priors' terms at the final ones.
    """
    t_len = frames.shape[0]
    size = min(crop, frames.shape[-1])
    o_r, o_c = _crop_origin(frames[t_len // 2], size)
    n_par = 3 * n + 2 + n_bg
    bg = np.zeros(3)
    w_bg = 1.0 / background_std
    half = (size - 1) / 2.0
    vel = np.zeros(2)
    w_prior = 1.0 / prior_px
    w_layout = 1.0 / layout_px if layout_px > 0 else 0.0
    chi2 = 0.0
    w_b = 1.0 / brightness_std
    inv_noise = 1.0 / noise_grey
    clip = saturation - 0.5
    gr, dgr = np.empty((n, size)), np.empty((n, size))
    gc, dgc = np.empty((n, size)), np.empty((n, size))
    jac = np.zeros((t_len * size * size, n_par))  # one row per pixel (censored: zeros)
    res = np.zeros(t_len * size * size)
    for _ in range(iterations):
        for t in range(t_len):
            dt = t - t_len // 2
            for k in range(n):
                _pixel_response(pos[k, 0] + dt * vel[0], o_r, size, sigma, gr[k], dgr[k])
                _pixel_response(pos[k, 1] + dt * vel[1], o_c, size, sigma, gc[k], dgc[k])
            for i in range(size):
                for j in range(size):
                    row = (t * size + i) * size + j
                    y = frames[t, o_r + i, o_c + j]
                    if not y < clip:
                        continue  # saturated: censored (its row stays zero)
                    grad = jac[row]
                    model = bg[0] + bg[1] * (i - half) + bg[2] * (j - half)
                    vr, vc = 0.0, 0.0
                    for k in range(n):
                        model += bright[k] * gr[k, i] * gc[k, j]
                        grad[3 * k] = bright[k] * dgr[k, i] * gc[k, j] * inv_noise
                        grad[3 * k + 1] = bright[k] * gr[k, i] * dgc[k, j] * inv_noise
                        grad[3 * k + 2] = gr[k, i] * gc[k, j] * inv_noise
                        vr += grad[3 * k]
                        vc += grad[3 * k + 1]
                    grad[3 * n] = vr * dt
                    grad[3 * n + 1] = vc * dt
                    if n_bg > 0:
                        grad[3 * n + 2] = inv_noise
                    if n_bg > 1:
                        grad[3 * n + 3] = (i - half) * inv_noise
                        grad[3 * n + 4] = (j - half) * inv_noise
                    res[row] = (y - model) * inv_noise
        chi2 = res @ res
        jtj = jac.T @ jac
        jtr = jac.T @ res
        for k in range(n):
            for a in range(2):
                jtj[3 * k + a, 3 * k + a] += w_prior * w_prior
                jtr[3 * k + a] += w_prior * w_prior * (prior_pos[k, a] - pos[k, a])
            jtj[3 * k + 2, 3 * k + 2] += w_b * w_b
            jtr[3 * k + 2] += w_b * w_b * (brightness_mean - bright[k])
        if layout_px > 0:
            # residual (pos_k − mean − layout_k) per axis: its Jacobian is I − 11ᵀ/n
            for a in range(2):
                off = _layout_residual(pos, n, layout, a)
                for k in range(n):
                    jtr[3 * k + a] -= w_layout * w_layout * off[k]
                    for j in range(n):
                        jtj[3 * k + a, 3 * j + a] += w_layout * w_layout * (
                            (1.0 if j == k else 0.0) - 1.0 / n)
        for a in range(n_bg):
            jtj[3 * n + 2 + a, 3 * n + 2 + a] += w_bg * w_bg
            jtr[3 * n + 2 + a] -= w_bg * w_bg * bg[a]
        step = _solve_damped(jtj, jtr, n_par, 1e-3)
        largest = 0.0
        for k in range(n):
            for a in range(2):
                move = min(max(step[3 * k + a], -0.2), 0.2)
                pos[k, a] += move
                largest = max(largest, abs(move))
            bright[k] += step[3 * k + 2]
            largest = max(largest, abs(step[3 * k + 2]) * STILL_BRIGHTNESS)
        for a in range(2):
            move = min(max(step[3 * n + a], -0.1), 0.1)
            vel[a] += move
            largest = max(largest, abs(move))
        for a in range(n_bg):
            bg[a] += step[3 * n + 2 + a]
        if largest < STILL_PIXELS:
            break
    cost = chi2
    for k in range(n):
        cost += ((brightness_mean - bright[k]) * w_b) ** 2
        for a in range(2):
            cost += ((prior_pos[k, a] - pos[k, a]) * w_prior) ** 2
    if layout_px > 0:
        for a in range(2):
            off = _layout_residual(pos, n, layout, a)
            cost += w_layout * w_layout * (off @ off)
    return cost


@numba.njit(cache=True)
def _layout_residual(pos, n, layout, axis):  # pragma: no cover - compiled
    """pos[k, axis] − mean_k(pos[:, axis]) − layout[k, axis] for the n targets: (n,)."""
    mean = 0.0
    for k in range(n):
        mean += pos[k, axis]
    mean /= n
    return pos[:n, axis] - mean - layout[:n, axis]


@numba.njit(cache=True)
def _pair_with_layout(centre, layout, k_layout, pos, bright, n, prior_out,
                      bright_out):  # pragma: no cover - compiled
    """Pair the layout's slots, placed at ``centre``, with the splat fit's n points (pos,
    bright), closest pairs first: slot i gets its point's position as prior_out[i] and its
    brightness as bright_out[i]; slots left over (k_layout > n) keep their own place and
    the mean brightness already in bright_out."""
    for i in range(k_layout):
        prior_out[i, 0] = centre[0] + layout[i, 0]
        prior_out[i, 1] = centre[1] + layout[i, 1]
    slot_free = np.ones(k_layout, np.bool_)
    point_free = np.ones(n, np.bool_)
    for _ in range(min(n, k_layout)):
        best, bi, bj = np.inf, 0, 0
        for i in range(k_layout):
            if not slot_free[i]:
                continue
            for j in range(n):
                if not point_free[j]:
                    continue
                d = ((centre[0] + layout[i, 0] - pos[j, 0]) ** 2
                     + (centre[1] + layout[i, 1] - pos[j, 1]) ** 2)
                if d < best:
                    best, bi, bj = d, i, j
        slot_free[bi] = False
        point_free[bj] = False
        prior_out[bi, 0] = pos[bj, 0]
        prior_out[bi, 1] = pos[bj, 1]
        bright_out[bi] = bright[bj]


@numba.njit(cache=True)
def _layout_fit(frames, pos, bright, n, k_least, k_most, layouts, layout_counts, layout_px,
                count_penalty, saturation, crop, iterations, prior_px, noise_grey, sigma,
                brightness_mean, brightness_std, n_bg,
                background_std):  # pragma: no cover - compiled
    """The physics fit under each learned layout of k_least … k_most targets, started with
    the layout's shape around the mean of the n points in pos; keeps the one of least cost
    plus ``count_penalty`` per target, writing its positions and brightness into pos and
    bright. Returns (its target count, that cost), or (0, inf) when no layout has k_least …
    k_most targets (pos and bright are then left as they were)."""
    centre = np.zeros(2)
    for k in range(n):
        centre += pos[k] / n
    best, best_k = np.inf, 0
    best_pos, best_bright = pos.copy(), bright.copy()
    trial_pos = np.zeros_like(pos)
    trial_bright = np.empty_like(bright)
    prior = np.zeros_like(pos)
    for t in range(layouts.shape[0]):
        k_t = layout_counts[t]
        if k_t < k_least or k_t > k_most:
            continue
        trial_bright[:] = brightness_mean
        _pair_with_layout(centre, layouts[t], k_t, pos, bright, n, prior, trial_bright)
        for k in range(k_t):
            trial_pos[k, 0] = centre[0] + layouts[t, k, 0]
            trial_pos[k, 1] = centre[1] + layouts[t, k, 1]
        cost = _physics_fit(frames, trial_pos, trial_bright, k_t, saturation, crop, iterations,
                            prior, prior_px, noise_grey, sigma, brightness_mean,
                            brightness_std, n_bg, background_std, layouts[t], layout_px)
        cost += count_penalty * k_t
        if cost < best:
            best, best_k = cost, k_t
            best_pos[:] = trial_pos
            best_bright[:] = trial_bright
    if best_k:
        pos[:] = best_pos
        bright[:] = best_bright
    return best_k, best


@numba.njit(cache=True)
def _count_fit(frames, local, o_r, o_c, max_targets, splat_starts, splat_iterations,
               saturation, physics_crop, physics_iterations, prior_px, noise, sigma, n_bg,
               background_std, count_penalty, b_mean, b_std, b_splat_std, pos,
               bright):  # pragma: no cover - compiled
    """Fit K = 0, 1, … targets to one window (map crop ``local`` at cell (o_r, o_c), LR
    frames (T, 11, 11)), each brightness with the prior N(b_mean, b_std²) in the physics fit
    and N(b_mean, b_splat_std²) in the splat fit (NO_PRIOR: none); the K of least cost +
    count_penalty · K
    wins, its positions (LR pixels) and brightness written into pos (K_max, 2) and bright
    (K_max,). Stops after two counts in a row that do not beat the best. Returns (K, its
    cost + count_penalty · K)."""
    trial_pos = np.zeros((max_targets, 2))
    trial_bright = np.zeros(max_targets)
    best = _physics_fit(frames, trial_pos, trial_bright, 0, saturation, physics_crop,
                        physics_iterations, trial_pos.copy(), prior_px, noise, sigma, b_mean,
                        b_std, n_bg, background_std, trial_pos, 0.0)
    best_k, worse = 0, 0
    for k in range(1, max_targets + 1):
        trial_pos[:] = 0.0
        trial_bright[:] = 0.0
        _splat_fit(local, o_r, o_c, k, max_targets, splat_starts, splat_iterations,
                   b_mean if b_std < NO_PRIOR else NO_PRIOR, b_splat_std, trial_pos,
                   trial_bright)
        for j in range(k):
            for a in range(2):
                trial_pos[j, a] = (trial_pos[j, a] - OFFSET) / RATIO
        cost = _physics_fit(frames, trial_pos, trial_bright, k, saturation, physics_crop,
                            physics_iterations, trial_pos.copy(), prior_px, noise, sigma,
                            b_mean, b_std, n_bg, background_std, trial_pos, 0.0)
        cost += count_penalty * k
        if cost < best:
            best, best_k, worse = cost, k, 0
            pos[:] = trial_pos
            bright[:] = trial_bright
        else:
            worse += 1
            if worse >= 2:
                break
    return best_k, best


@numba.njit(cache=True)
def _extract_batch(maps, windows, saturation, refine, score_mass, max_targets, min_mass,
                   brightness_mean, brightness_std, splat_crop, splat_starts,
                   splat_iterations, physics_crop, physics_iterations, prior_px,
                   physics_brightness_std, background_std, noise, n_bg, sigma, layouts,
                   layout_counts, layout_px, count_search, count_penalty, count_fit,
                   brightness_prior, counts, points):  # pragma: no cover - compiled
    """Every window's count into counts (B,) and (row, col, score) into points (B, K, 3).
    ``refine``: 0 none, 1 splat, 2 physics (the index in REFINES); noise (B,) the pixel
    noise std and n_bg (B,) the background terms of each window's physics fit; layouts
    (L, K, 2) and layout_counts (L,) the learned layouts (L = 0: none); ``count_fit``: the
    count chosen by the fits (:func:`_count_fit`) instead of the map's mass."""
    for b in range(maps.shape[0]):
        m = maps[b]
        o_r, o_c, local = _crop(m, splat_crop)
        pos = np.zeros((max_targets, 2))
        bright = np.zeros(max_targets)
        if count_fit:
            n, cost = _count_fit(windows[b], local, o_r, o_c, max_targets, splat_starts,
                                 splat_iterations, saturation[b], physics_crop,
                                 physics_iterations, prior_px, noise[b], sigma, n_bg[b],
                                 background_std, count_penalty,
                                 brightness_mean if brightness_prior else 0.0,
                                 physics_brightness_std if brightness_prior else NO_PRIOR,
                                 brightness_std if brightness_prior else NO_PRIOR, pos, bright)
            if n and layout_counts.shape[0] > 0 and layout_px > 0:
                # a learned layout wins where the data match it: its shape fixes two of each
                # target's three parameters, worth 2/3 of the count penalty per target
                lay_pos, lay_bright = pos.copy(), bright.copy()
                k_lay, lay_cost = _layout_fit(
                    windows[b], lay_pos, lay_bright, n, max(n - 1, 1), min(n + 1, max_targets),
                    layouts, layout_counts, layout_px, count_penalty, saturation[b],
                    physics_crop, physics_iterations, prior_px, noise[b], sigma,
                    brightness_mean, physics_brightness_std, n_bg[b], background_std)
                if k_lay and lay_cost - 2.0 * count_penalty * k_lay / 3.0 < cost:
                    n = k_lay
                    pos[:] = lay_pos
                    bright[:] = lay_bright
            counts[b] = n
            _write_points(m, pos, bright, n, score_mass, points[b])
            continue
        n = _count(local, brightness_mean, min_mass, max_targets)
        counts[b] = n
        if n == 0:
            continue
        if refine == 0:
            _greedy(m, max_targets, brightness_mean, pos, bright)
        else:
            _splat_fit(local, o_r, o_c, n, max_targets, splat_starts, splat_iterations,
                       brightness_mean, brightness_std, pos, bright)
        for k in range(n):
            for a in range(2):
                pos[k, a] = (pos[k, a] - OFFSET) / RATIO
        if refine == 2:
            found = 0
            if layout_counts.shape[0] > 0 and layout_px > 0:
                # the map's count is trusted from the least learned count to DENSE_COUNT − 1;
                # below (a group of 2+ counted 1) and from DENSE_COUNT up larger counts compete
                sure = layout_counts.min() <= n < DENSE_COUNT
                k_most = min(n if sure else n + count_search, max_targets)
                found, _ = _layout_fit(windows[b], pos, bright, n, n, k_most, layouts,
                                       layout_counts,
                                    layout_px, count_penalty, saturation[b], physics_crop,
                                    physics_iterations, prior_px, noise[b], sigma,
                                    brightness_mean, physics_brightness_std, n_bg[b],
                                    background_std)
            if found:
                n = found
                counts[b] = n
            else:
                _physics_fit(windows[b], pos, bright, n, saturation[b], physics_crop,
                             physics_iterations, pos.copy(), prior_px, noise[b], sigma,
                             brightness_mean, physics_brightness_std, n_bg[b], background_std,
                             pos, 0.0)
        _write_points(m, pos, bright, n, score_mass, points[b])


@numba.njit(cache=True)
def _write_points(m, pos, bright, n, score_mass, out):  # pragma: no cover - compiled
    """(row, col, score) of the n targets into out (K, 3): score = fitted brightness, or
    the map's positive mass with ``score_mass``."""
    mass = 0.0
    if score_mass:
        for v in m.ravel():
            if v > 0:
                mass += v
    for k in range(n):
        out[k, 0] = pos[k, 0]
        out[k, 1] = pos[k, 1]
        out[k, 2] = mass if score_mass else bright[k]


def extract_points(maps, windows=None, cfg: ExtractorConfig = ExtractorConfig(),
                   saturation=255.0, sigma: float | None = None):
    """Sub-pixel targets of each window's middle frame.

    Parameters
    ----------
    maps : array-like of shape (B, 33, 33)
        Model output in grey levels (brightness-preserving maps): ndarray or CPU tensor.
    windows : array-like of shape (B, 5, 11, 11), optional
        The LR frames of each window (grey levels); needed for ``refine="physics"``.
    saturation : float or array-like of shape (B,)
        Level at which the windows' pixels clip: 255 for uint8 data, 255 − background for
        patches whose background was subtracted after clipping.
    sigma : float, optional
        PSF standard deviation of the physics fit (LR pixels): the data's, where they state
        it; None takes ``cfg.psf_sigma``.

    Returns
    -------
    list of B ndarrays of shape (K_b, 3): (row, col, score) in patch pixels, float64.
    """
    if cfg.refine not in REFINES:
        raise ValueError(f"refine must be one of {REFINES}, got {cfg.refine!r}")
    if cfg.score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {cfg.score!r}")
    if cfg.count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {cfg.count!r}")
    if cfg.count == "fit" and cfg.refine != "physics":
        raise ValueError(f"count='fit' chooses the count by the physics fit: it needs "
                         f"refine='physics', got refine={cfg.refine!r}")
    if cfg.noise_grey is not None and not cfg.noise_grey > 0:
        raise ValueError(f"noise_grey must be > 0 (or null: estimated), got {cfg.noise_grey}")
    if cfg.background_terms not in BACKGROUND_TERMS:
        raise ValueError(f"background_terms must be one of {BACKGROUND_TERMS}, got "
                         f"{cfg.background_terms}")
    if cfg.count_search < 0 or cfg.count_penalty < 0 or cfg.layout_px < 0:
        raise ValueError("count_search, count_penalty and layout_px must be >= 0, got "
                         f"{cfg.count_search}, {cfg.count_penalty}, {cfg.layout_px}")
    for name in ("brightness_std", "physics_brightness_std", "prior_px", "noise_floor",
                 "background_std", "psf_sigma"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")
    maps_a = np.ascontiguousarray(maps, dtype=np.float64)
    b = maps_a.shape[0]
    noise = np.ones(b)  # only the physics fit weighs pixels by the noise...
    n_bg = np.zeros(b, dtype=np.int64)  # ...and fits a background
    if cfg.refine == "physics":
        if windows is None:
            raise ValueError("refine='physics' needs the LR windows")
        frames = np.ascontiguousarray(windows, dtype=np.float64)
        noise = (np.full(b, float(cfg.noise_grey)) if cfg.noise_grey is not None
                 else estimate_noise(frames, cfg.noise_floor))
        n_bg[:] = cfg.background_terms
        if cfg.background_terms and cfg.texture_grey > 0:
            n_bg[estimate_texture(frames) <= cfg.texture_grey] = 0
    else:
        frames = np.zeros((b, 1, 1, 1))
    layouts, layout_counts = load_layouts(cfg.layouts, cfg.max_targets)
    sat = np.ascontiguousarray(np.broadcast_to(
        np.asarray(saturation, dtype=np.float64), (b,)))
    counts = np.zeros(b, dtype=np.int64)
    points = np.zeros((b, cfg.max_targets, 3))
    _extract_batch(maps_a, frames, sat, REFINES.index(cfg.refine), cfg.score == "mass",
                   cfg.max_targets, cfg.min_mass, cfg.brightness_mean, cfg.brightness_std,
                   cfg.splat_crop, cfg.splat_starts, cfg.splat_iterations, cfg.physics_crop,
                   cfg.physics_iterations, cfg.prior_px, cfg.physics_brightness_std,
                   cfg.background_std, noise, n_bg,
                   float(cfg.psf_sigma if sigma is None else sigma), layouts, layout_counts,
                   cfg.layout_px, cfg.count_search, cfg.count_penalty, cfg.count == "fit",
                   cfg.brightness_prior, counts, points)
    return [points[i, :counts[i]].copy() for i in range(b)]
