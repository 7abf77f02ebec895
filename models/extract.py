"""Sub-pixel extractor: HR map → target count → sub-pixel (row, col, score) points.

One implementation shared by ``python -m models evaluate --mode points`` and the live
extractor stage. Three steps, all vectorised over a batch of windows:

1. **Count.** The networks are trained on brightness-preserving maps, so the map's mass
   over the patch divided by the mean target brightness estimates the target count K
   (the SeqCSIST brightness range 220–250 makes K ∈ {2, 3, 4} separable by mass).
2. **Splat fit.** Greedy initialisation on the residual map, then Gauss–Newton on the map
   model Σ_k b_k · tent(u − u_k) (the bilinear splat the networks learn), giving K
   continuous HR positions u_k and brightnesses b_k.
3. **Physics fit** (``refine="physics"``, the default when frames are given): Gauss–Newton on
   the 5 LR frames with the pixel-integrated Gaussian PSF, one common velocity over the window
   and a Gaussian prior that keeps each target near its splat-fit position (the measured
   failure of an unregularised fit under noise, docs/reference.md §9). Saturated pixels (255) are
   excluded from the residual.

Positions are in patch pixels with integer = pixel centre; HR index i ↔ (i − 1)/3.

Plain numpy in float64, no torch: the arrays are small (a frame's few windows), so the cost
is per-operation overhead, and numpy's is a fraction of torch's (the same fits written in
torch took about twice as long per frame; ``benchmarks/extract.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from sim.geometry import RATIO, SIGMA

OFFSET = (RATIO - 1) // 2  # HR index of LR pixel centre 0


@dataclass(frozen=True)
class ExtractorConfig:
    """Knobs of :func:`extract_points` (units: grey levels, LR pixels)."""

    brightness_mean: float = 235.0  # mean target brightness of the data (SeqCSIST U[220,250])
    max_targets: int = 4
    min_mass: float = 0.5  # windows with mass < min_mass·brightness_mean yield no targets
    splat_iterations: int = 15
    splat_starts: int = 4  # multi-start Gauss–Newton (see splat_fit)
    refine: str = "physics"  # "none", "splat" or "physics"
    physics_iterations: int = 10
    prior_px: float = 0.05  # std of the prior keeping physics positions near the splat fit
    brightness_std: float = 20.0  # std of the brightness prior around brightness_mean
    splat_crop: int = 10  # HR cells per side of the region the splat fit looks at
    physics_crop: int = 6  # LR pixels per side of the region the physics fit looks at
    noise_grey: float = 1.0  # assumed pixel noise std (uint8 rounding ≈ 0.29)
    score: str = "brightness"  # "brightness" (fitted b_k) or "mass"
    chunk: int = 2048


def estimate_counts(maps: np.ndarray, cfg: ExtractorConfig) -> np.ndarray:
    """Target count per map (B, H, W) from its positive mass: shape (B,), int64 in
    0..max_targets."""
    mass = np.clip(maps, 0, None).sum(axis=(1, 2))
    k = np.round(mass / cfg.brightness_mean).astype(np.int64)
    k[mass < cfg.min_mass * cfg.brightness_mean] = 0
    return np.clip(k, 0, cfg.max_targets)


def crop_origin(mass_map: np.ndarray, size: int) -> np.ndarray:
    """Top-left corner (B, 2) of the size×size region centred on each map's centre of mass."""
    b, h, w = mass_map.shape
    m = np.clip(mass_map, 0, None)
    total = np.maximum(m.sum(axis=(1, 2)), 1e-9)
    r = (m.sum(axis=2) @ np.arange(h, dtype=m.dtype)) / total
    c = (m.sum(axis=1) @ np.arange(w, dtype=m.dtype)) / total
    origin = np.round(np.stack([r, c], axis=1) - (size - 1) / 2).astype(np.int64)
    return np.stack([np.clip(origin[:, 0], 0, h - size), np.clip(origin[:, 1], 0, w - size)],
                    axis=1)


def crop(images: np.ndarray, origin: np.ndarray, size: int) -> np.ndarray:
    """images (B, ..., H, W) cropped to (B, ..., size, size) at per-sample origins (B, 2)."""
    ar = np.arange(size)
    rows = origin[:, 0, None] + ar  # (B, S)
    cols = origin[:, 1, None] + ar
    lead = images.shape[1:-2]
    flat = images.reshape(images.shape[0], -1, *images.shape[-2:])
    idx_b = np.arange(images.shape[0])[:, None, None, None]
    idx_c = np.arange(flat.shape[1])[None, :, None, None]
    out = flat[idx_b, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    return out.reshape(images.shape[0], *lead, size, size)


def _tent(u: np.ndarray, grid: np.ndarray):
    """Bilinear weights of positions u (B, K) on axis nodes grid (S,): (B, K, S) and ∂/∂u."""
    d = grid - u[..., None]
    ad = np.abs(d)
    return np.maximum(1 - ad, 0), np.where(ad < 1, np.sign(d), 0.0)


def _greedy_init(maps: np.ndarray, k_max: int, cfg: ExtractorConfig):
    """K_max candidate positions (B, K_max, 2) in HR units and brightnesses (B, K_max), by
    repeated peak picking on the residual map."""
    b, side = maps.shape[0], maps.shape[-1]
    grid = np.arange(side, dtype=np.float64)
    res = np.clip(maps, 0, None)
    pos = np.zeros((b, k_max, 2))
    bright = np.zeros((b, k_max))
    rows = np.arange(b)
    for k in range(k_max):
        # the 2×2 block of largest mass holds the bilinear footprint of the strongest target
        block = res[:, :-1, :-1] + res[:, 1:, :-1] + res[:, :-1, 1:] + res[:, 1:, 1:]
        flat = block.reshape(b, -1).argmax(axis=1)
        r0, c0 = flat // (side - 1), flat % (side - 1)
        q = np.stack([res[rows, r0, c0], res[rows, r0, c0 + 1],
                      res[rows, r0 + 1, c0], res[rows, r0 + 1, c0 + 1]], axis=1)
        mass = np.maximum(q.sum(axis=1), 1e-6)
        pos[:, k, 0] = r0 + (q[:, 2] + q[:, 3]) / mass
        pos[:, k, 1] = c0 + (q[:, 1] + q[:, 3]) / mass
        bright[:, k] = np.minimum(mass, cfg.brightness_mean)
        wr, _ = _tent(pos[:, k, 0], grid)
        wc, _ = _tent(pos[:, k, 1], grid)
        res = np.maximum(res - bright[:, k, None, None] * wr[:, :, None] * wc[:, None, :], 0)
    return pos, bright


def _solve(jac: np.ndarray, res: np.ndarray, damping: np.ndarray) -> np.ndarray:
    """Damped Gauss–Newton step: (JᵀJ + D) Δ = Jᵀ r for a batch; jac (B, M, P), res (B, M),
    damping (B, P). Returns Δ (B, P)."""
    jt = jac.transpose(0, 2, 1)
    jtj = jt @ jac
    diag = np.arange(jtj.shape[-1])
    jtj[:, diag, diag] += damping
    return np.linalg.solve(jtj, jt @ res[..., None])[..., 0]


def _splat_gn(local: np.ndarray, pos, bright, act, cfg: ExtractorConfig):
    """Gauss–Newton of the splat model on cropped maps (B, S, S) from one start.

    Returns positions (B, K, 2) in crop cells, brightness (B, K) and the final cost (B,).
    """
    b, size = local.shape[0], local.shape[-1]
    k_max, n_pix = pos.shape[1], size * size
    grid = np.arange(size, dtype=np.float64)
    target = local.reshape(b, -1)
    mask3 = np.repeat(act, 3, axis=1)  # (B, 3K) per-parameter mask
    w_b = 1.0 / cfg.brightness_std

    def residual(pos, bright):
        wr, dwr = _tent(pos[..., 0], grid)
        wc, dwc = _tent(pos[..., 1], grid)
        bk = bright * act
        model = ((bk[..., None] * wr).transpose(0, 2, 1) @ wc).reshape(b, -1)
        res = np.concatenate([target - model, (cfg.brightness_mean - bright) * w_b * act], axis=1)
        return res, (wr, dwr, wc, dwc, bk)

    # Jacobian rows: the S² map cells, then one brightness-prior row per target;
    # columns: (row, col, brightness) of each target
    jac = np.zeros((b, n_pix + k_max, 3 * k_max))
    jac[:, n_pix + np.arange(k_max), 3 * np.arange(k_max) + 2] = w_b
    per_k = np.empty((b, k_max, 3, size, size))
    for _ in range(cfg.splat_iterations):
        res, (wr, dwr, wc, dwc, bk) = residual(pos, bright)
        per_k[:, :, 0] = (bk[..., None] * dwr)[..., :, None] * wc[..., None, :]
        per_k[:, :, 1] = (bk[..., None] * wr)[..., :, None] * dwc[..., None, :]
        per_k[:, :, 2] = wr[..., :, None] * wc[..., None, :]
        jac[:, :n_pix] = per_k.reshape(b, 3 * k_max, n_pix).transpose(0, 2, 1)
        masked = jac * mask3[:, None, :]
        damping = 1e-2 * (masked * masked).sum(axis=1) + 1e-6 + (1 - mask3)
        step = _solve(masked, res, damping).reshape(b, k_max, 3)
        pos = np.clip(pos + np.clip(step[..., :2], -0.3, 0.3), 0, size - 1)
        bright = bright + step[..., 2] * act
    res, _ = residual(pos, bright)
    return pos, bright * act, (res * res).sum(axis=1)


def splat_fit(maps: np.ndarray, counts: np.ndarray, cfg: ExtractorConfig):
    """Fit K bilinear splats to each map (B, 33, 33). Returns HR positions (B, K_max, 2) and
    brightness (B, K_max).

    The fit looks at a ``splat_crop``² region around the map's centre of mass, with a
    Gaussian prior N(brightness_mean, brightness_std²) on each brightness. It starts from the
    greedy peaks and from ``splat_starts − 1`` deterministic perturbations of them (the
    overlapping footprints of targets 0.9 cells apart make the cost multimodal) and keeps
    the start with the lowest final cost. Targets k ≥ counts[b] are inactive.
    """
    k_max, size = cfg.max_targets, min(cfg.splat_crop, maps.shape[-1])
    origin = crop_origin(maps, size)
    local = crop(maps, origin, size)
    pos0, bright0 = _greedy_init(local, k_max, cfg)
    act = (np.arange(k_max)[None, :] < counts[:, None]).astype(np.float64)  # (B, K)
    starts, b = cfg.splat_starts, maps.shape[0]
    angle = 2 * np.pi * (np.arange(k_max)[None, :] / k_max + np.arange(starts)[:, None] / starts)
    jitter = 0.35 * np.stack([np.cos(angle), np.sin(angle)], axis=-1)  # (S, K, 2)
    jitter[0] = 0.0  # the first start is the greedy answer itself
    # all starts in one Gauss–Newton batch, start-major: row s·B + i is start s of map i
    pos, bright, cost = _splat_gn(
        np.tile(local, (starts, 1, 1)),
        np.clip(pos0[None] + jitter[:, None], 0, size - 1).reshape(starts * b, k_max, 2),
        np.tile(bright0, (starts, 1)), np.tile(act, (starts, 1)), cfg)
    best = cost.reshape(starts, b).argmin(axis=0)  # first start wins ties
    rows = best * b + np.arange(b)
    return pos[rows] + origin[:, None, :], bright[rows]


def _pixel_response(t: np.ndarray, pixels: np.ndarray, sigma: float):
    """1-D pixel-integrated Gaussian of targets at t (B, T, K) on pixel centres (B, S).

    Returns g and ∂g/∂t, both (B, T, K, S).
    """
    p = pixels[:, None, None, :]
    s = sigma * np.sqrt(2.0)
    hi = (p + 0.5 - t[..., None]) / s
    lo = (p - 0.5 - t[..., None]) / s
    g = 0.5 * (erf(hi) - erf(lo))
    norm = 1.0 / (sigma * np.sqrt(2.0 * np.pi))
    dg = -norm * (np.exp(-hi * hi) - np.exp(-lo * lo))
    return g, dg


def physics_fit(windows: np.ndarray, pos_px: np.ndarray, bright: np.ndarray,
                counts: np.ndarray, cfg: ExtractorConfig, saturation: np.ndarray,
                sigma: float = SIGMA):
    """Refine middle-frame positions on the 5 LR frames (common velocity, prior to pos_px).

    windows (B, 5, 11, 11) grey levels; pos_px (B, K, 2) start positions in LR pixels;
    bright (B, K); saturation (B,) the level at which each window's pixels clip (pixels
    within 0.5 of it are censored). Returns refined positions (B, K, 2) and brightness (B, K).
    """
    b, t_len = windows.shape[:2]
    k_max, size = pos_px.shape[1], min(cfg.physics_crop, windows.shape[-1])
    n_par, n_pix = 3 * k_max + 2, size * size
    active = (np.arange(k_max)[None, :] < counts[:, None]).astype(np.float64)
    origin = crop_origin(windows[:, t_len // 2], size)
    local = crop(windows, origin, size)  # (B, T, S, S)
    pix_r = (origin[:, 0, None] + np.arange(size)).astype(np.float64)  # (B, S)
    pix_c = (origin[:, 1, None] + np.arange(size)).astype(np.float64)
    y = local.reshape(b, t_len, -1)
    clip = (saturation - 0.5)[:, None, None, None]
    valid = (local < clip).reshape(b, t_len, -1)  # saturated = censored
    weight = valid / cfg.noise_grey  # (B, T, S²) residual weight per pixel
    dt = np.arange(t_len, dtype=np.float64) - t_len // 2  # (T,)
    prior, pos, br = pos_px.copy(), pos_px.copy(), bright.copy()
    vel = np.zeros((b, 2))
    w_prior = 1.0 / cfg.prior_px
    par_mask = np.concatenate([np.repeat(active, 3, axis=1), np.ones((b, 2))], axis=1)
    # Jacobian rows: T·S² pixels, then the prior rows w_prior · (prior − pos) of every
    # position coordinate; columns: (row, col, brightness) of each target, then the velocity
    jac = np.zeros((b, t_len * n_pix + 2 * k_max, n_par))
    coord = np.arange(2 * k_max)
    jac[:, t_len * n_pix + coord, 3 * (coord // 2) + coord % 2] = w_prior
    per_k = np.empty((b, t_len, k_max, 3, size, size))
    pix_jac = np.empty((b, t_len, n_par, size, size))
    for _ in range(cfg.physics_iterations):
        r_t = pos[:, None, :, 0] + dt[None, :, None] * vel[:, None, None, 0]  # (B, T, K)
        c_t = pos[:, None, :, 1] + dt[None, :, None] * vel[:, None, None, 1]
        gr, dgr = _pixel_response(r_t, pix_r, sigma)  # (B, T, K, S)
        gc, dgc = _pixel_response(c_t, pix_c, sigma)
        a = (br * active)[:, None, :, None]
        img = ((a * gr).transpose(0, 1, 3, 2) @ gc).reshape(b, t_len, -1)
        res = (y - img) * weight  # (B, T, S²)
        per_k[:, :, :, 0] = (a * dgr)[..., :, None] * gc[..., None, :]
        per_k[:, :, :, 1] = (a * gr)[..., :, None] * dgc[..., None, :]
        per_k[:, :, :, 2] = gr[..., :, None] * gc[..., None, :]
        pix_jac[:, :, :3 * k_max] = per_k.reshape(b, t_len, 3 * k_max, size, size)
        pix_jac[:, :, 3 * k_max:] = per_k[:, :, :, :2].sum(axis=2) * dt[:, None, None, None]
        weighted = pix_jac.reshape(b, t_len, n_par, n_pix) * weight[:, :, None, :]
        jac[:, :t_len * n_pix] = weighted.transpose(0, 1, 3, 2).reshape(b, -1, n_par)
        masked = jac * par_mask[:, None, :]
        res_all = np.concatenate([res.reshape(b, -1), ((prior - pos) * w_prior).reshape(b, -1)],
                                 axis=1)
        damping = 1e-3 * (masked * masked).sum(axis=1) + 1e-6 + (1 - par_mask)
        step = _solve(masked, res_all, damping)
        upd = step[:, :3 * k_max].reshape(b, k_max, 3)
        pos = pos + np.clip(upd[..., :2], -0.2, 0.2) * active[..., None]
        br = (br + upd[..., 2]) * active
        vel = vel + np.clip(step[:, 3 * k_max:], -0.1, 0.1)
    return pos, br


def extract_points(maps, windows=None, cfg: ExtractorConfig = ExtractorConfig(),
                   saturation=255.0):
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

    Returns
    -------
    list of B ndarrays of shape (K_b, 3): (row, col, score) in patch pixels, float64.
    """
    maps_a = np.asarray(maps, dtype=np.float64)
    if cfg.refine == "physics" and windows is None:
        raise ValueError("refine='physics' needs the LR windows")
    sat = np.broadcast_to(np.asarray(saturation, dtype=np.float64), (maps_a.shape[0],))
    out: list[np.ndarray] = []
    for s in range(0, maps_a.shape[0], cfg.chunk):
        m = maps_a[s:s + cfg.chunk]
        counts = estimate_counts(m, cfg)
        pos, bright = (_greedy_init(m, cfg.max_targets, cfg) if cfg.refine == "none"
                       else splat_fit(m, counts, cfg))
        pos_px = (pos - OFFSET) / RATIO
        if cfg.refine == "physics":
            w = np.asarray(windows[s:s + cfg.chunk], dtype=np.float64)
            pos_px, bright = physics_fit(w, pos_px, bright, counts, cfg, sat[s:s + cfg.chunk])
        score = (bright if cfg.score == "brightness"
                 else np.clip(m, 0, None).sum(axis=(1, 2))[:, None])
        score = np.broadcast_to(score, (m.shape[0], cfg.max_targets))
        for i in range(m.shape[0]):
            k = int(counts[i])
            out.append(np.column_stack([pos_px[i, :k], score[i, :k]]))
    return out
