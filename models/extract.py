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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


def estimate_counts(maps: torch.Tensor, cfg: ExtractorConfig) -> torch.Tensor:
    """Target count per map from its positive mass: shape (B,), int64 in 0..max_targets."""
    mass = maps.clamp(min=0).sum(dim=(1, 2))
    k = torch.round(mass / cfg.brightness_mean).long()
    k = torch.where(mass < cfg.min_mass * cfg.brightness_mean, torch.zeros_like(k), k)
    return k.clamp(0, cfg.max_targets)


def crop_origin(mass_map: torch.Tensor, size: int) -> torch.Tensor:
    """Top-left corner (B, 2) of the size×size region centred on each map's centre of mass."""
    b, h, w = mass_map.shape
    m = mass_map.clamp(min=0)
    total = m.sum(dim=(1, 2)).clamp(min=1e-9)
    r = (m.sum(dim=2) * torch.arange(h, dtype=m.dtype)).sum(dim=1) / total
    c = (m.sum(dim=1) * torch.arange(w, dtype=m.dtype)).sum(dim=1) / total
    centre = torch.stack([r, c], dim=1)
    origin = torch.round(centre - (size - 1) / 2).long()
    return torch.stack([origin[:, 0].clamp(0, h - size), origin[:, 1].clamp(0, w - size)], dim=1)


def crop(images: torch.Tensor, origin: torch.Tensor, size: int) -> torch.Tensor:
    """images (B, ..., H, W) cropped to (B, ..., size, size) at per-sample origins (B, 2)."""
    ar = torch.arange(size)
    rows = (origin[:, 0, None] + ar)  # (B, S)
    cols = (origin[:, 1, None] + ar)
    lead = images.shape[1:-2]
    flat = images.reshape(images.shape[0], -1, *images.shape[-2:])
    idx_b = torch.arange(images.shape[0])[:, None, None, None]
    idx_c = torch.arange(flat.shape[1])[None, :, None, None]
    out = flat[idx_b, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    return out.reshape(images.shape[0], *lead, size, size)


def _tent(u: torch.Tensor, grid: torch.Tensor):
    """Bilinear weights of positions u (B, K) on axis nodes grid (B, S): (B, K, S) and ∂/∂u."""
    d = grid[:, None, :] - u[..., None]
    w = (1 - d.abs()).clamp(min=0)
    dw = torch.where(d.abs() < 1, torch.sign(d), torch.zeros_like(d))  # ∂w/∂u
    return w, dw


def _greedy_init(maps: torch.Tensor, k_max: int, cfg: ExtractorConfig):
    """K_max candidate positions (HR units) by repeated peak picking on the residual map."""
    b, side = maps.shape[0], maps.shape[-1]
    grid = torch.arange(side, dtype=maps.dtype).expand(b, side)
    res = maps.clamp(min=0).clone()
    pos = torch.zeros(b, k_max, 2, dtype=maps.dtype)
    bright = torch.zeros(b, k_max, dtype=maps.dtype)
    rows = torch.arange(b)
    for k in range(k_max):
        # the 2×2 block of largest mass holds the bilinear footprint of the strongest target
        block = res[:, :-1, :-1] + res[:, 1:, :-1] + res[:, :-1, 1:] + res[:, 1:, 1:]
        flat = block.reshape(b, -1).argmax(dim=1)
        r0, c0 = flat // (side - 1), flat % (side - 1)
        q = torch.stack([res[rows, r0, c0], res[rows, r0, c0 + 1],
                         res[rows, r0 + 1, c0], res[rows, r0 + 1, c0 + 1]], dim=1)
        mass = q.sum(dim=1).clamp(min=1e-6)
        pos[:, k, 0] = r0 + (q[:, 2] + q[:, 3]) / mass
        pos[:, k, 1] = c0 + (q[:, 1] + q[:, 3]) / mass
        bright[:, k] = torch.minimum(mass, torch.full_like(mass, cfg.brightness_mean))
        wr, _ = _tent(pos[:, k:k + 1, 0], grid)
        wc, _ = _tent(pos[:, k:k + 1, 1], grid)
        res = (res - bright[:, k, None, None] * wr[:, 0, :, None] * wc[:, 0, None, :]).clamp(min=0)
    return pos, bright


def _solve(jac: torch.Tensor, res: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
    """Damped Gauss–Newton step: (JᵀJ + D) Δ = Jᵀ r for a batch; jac (B, M, P), res (B, M)."""
    jtj = jac.transpose(1, 2) @ jac + torch.diag_embed(damping)
    jtr = (jac.transpose(1, 2) @ res[..., None])[..., 0]
    return torch.linalg.solve(jtj, jtr)


def _splat_gn(local: torch.Tensor, pos, bright, act, cfg: ExtractorConfig):
    """Gauss–Newton of the splat model on cropped maps (B, S, S) from one start.

    Returns positions (B, K, 2) in crop cells, brightness (B, K) and the final cost (B,).
    """
    b, size = local.shape[0], local.shape[-1]
    k_max = pos.shape[1]
    grid = torch.arange(size, dtype=local.dtype).expand(b, size)
    target = local.reshape(b, -1)
    mask3 = act.repeat_interleave(3, dim=1)  # (B, 3K) per-parameter mask
    w_b = 1.0 / cfg.brightness_std
    prior_jac = torch.zeros(k_max, 3 * k_max, dtype=local.dtype)
    prior_jac[torch.arange(k_max), 3 * torch.arange(k_max) + 2] = w_b

    def residual(pos, bright):
        wr, dwr = _tent(pos[..., 0], grid)
        wc, dwc = _tent(pos[..., 1], grid)
        bk = bright * act
        model = torch.einsum("bk,bki,bkj->bij", bk, wr, wc).reshape(b, -1)
        res = torch.cat([target - model, (cfg.brightness_mean - bright) * w_b * act], dim=1)
        return res, (wr, dwr, wc, dwc, bk)

    for _ in range(cfg.splat_iterations):
        res, (wr, dwr, wc, dwc, bk) = residual(pos, bright)
        j_r = (bk[..., None, None] * dwr[..., :, None] * wc[..., None, :]).reshape(b, k_max, -1)
        j_c = (bk[..., None, None] * wr[..., :, None] * dwc[..., None, :]).reshape(b, k_max, -1)
        j_b = (wr[..., :, None] * wc[..., None, :]).reshape(b, k_max, -1)
        jac = torch.stack([j_r, j_c, j_b], dim=2).reshape(b, 3 * k_max, -1).transpose(1, 2)
        jac = torch.cat([jac, prior_jac.expand(b, -1, -1)], dim=1) * mask3[:, None, :]
        damping = 1e-2 * jac.pow(2).sum(dim=1) + 1e-6 + (1 - mask3)
        step = _solve(jac, res, damping).view(b, k_max, 3)
        pos = (pos + step[..., :2].clamp(-0.3, 0.3)).clamp(0, size - 1)
        bright = bright + step[..., 2] * act
    res, _ = residual(pos, bright)
    return pos, bright * act, res.pow(2).sum(dim=1)


def splat_fit(maps: torch.Tensor, counts: torch.Tensor, cfg: ExtractorConfig):
    """Fit K bilinear splats to each map. Returns HR positions (B, K_max, 2), brightness (B, K_max).

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
    act = (torch.arange(k_max)[None, :] < counts[:, None]).to(maps.dtype)  # (B, K)
    starts, b = cfg.splat_starts, maps.shape[0]
    angle = 2 * np.pi * (np.arange(k_max)[None, :] / k_max + np.arange(starts)[:, None] / starts)
    jitter = 0.35 * torch.as_tensor(np.stack([np.cos(angle), np.sin(angle)], axis=-1),
                                    dtype=maps.dtype)  # (S, K, 2)
    jitter[0] = 0.0  # the first start is the greedy answer itself
    # all starts in one Gauss–Newton batch, start-major: row s·B + i is start s of map i
    pos, bright, cost = _splat_gn(
        local.repeat(starts, 1, 1),
        (pos0[None] + jitter[:, None]).clamp(0, size - 1).reshape(starts * b, k_max, 2),
        bright0.repeat(starts, 1), act.repeat(starts, 1), cfg)
    best = cost.view(starts, b).argmin(dim=0)  # first start wins ties
    rows = best * b + torch.arange(b)
    return pos[rows] + origin[:, None, :].to(maps.dtype), bright[rows]


def _pixel_response(t: torch.Tensor, pixels: torch.Tensor, sigma: float):
    """1-D pixel-integrated Gaussian of targets at t (B, T, K) on pixel centres (B, S).

    Returns g and ∂g/∂t, both (B, T, K, S).
    """
    p = pixels[:, None, None, :]
    s = sigma * np.sqrt(2.0)
    hi = (p + 0.5 - t[..., None]) / s
    lo = (p - 0.5 - t[..., None]) / s
    g = 0.5 * (torch.erf(hi) - torch.erf(lo))
    norm = 1.0 / (sigma * np.sqrt(2.0 * np.pi))
    dg = -norm * (torch.exp(-hi * hi) - torch.exp(-lo * lo))
    return g, dg


def physics_fit(windows: torch.Tensor, pos_px: torch.Tensor, bright: torch.Tensor,
                counts: torch.Tensor, cfg: ExtractorConfig, saturation: torch.Tensor,
                sigma: float = SIGMA):
    """Refine middle-frame positions on the 5 LR frames (common velocity, prior to pos_px).

    windows (B, 5, 11, 11) grey levels; pos_px (B, K, 2) start positions in LR pixels;
    bright (B, K); saturation (B,) the level at which each window's pixels clip (pixels
    within 0.5 of it are censored). Returns refined positions (B, K, 2) and brightness (B, K).
    """
    b, t_len = windows.shape[:2]
    k_max, size = pos_px.shape[1], min(cfg.physics_crop, windows.shape[-1])
    active = (torch.arange(k_max)[None, :] < counts[:, None]).to(windows.dtype)
    origin = crop_origin(windows[:, t_len // 2], size)
    local = crop(windows, origin, size)  # (B, T, S, S)
    pix_r = (origin[:, 0, None] + torch.arange(size)).to(windows.dtype)  # (B, S)
    pix_c = (origin[:, 1, None] + torch.arange(size)).to(windows.dtype)
    y = local.reshape(b, t_len, -1)
    clip = (saturation - 0.5)[:, None, None, None]
    valid = (local < clip).reshape(b, t_len, -1).to(windows.dtype)  # saturated = censored
    dt = torch.arange(t_len, dtype=windows.dtype) - t_len // 2  # (T,)
    prior = pos_px.clone()
    pos, br = pos_px.clone(), bright.clone()
    vel = torch.zeros(b, 2, dtype=windows.dtype)
    n_par = 3 * k_max + 2
    w_noise = 1.0 / cfg.noise_grey
    w_prior = 1.0 / cfg.prior_px
    par_mask = torch.cat([active.repeat_interleave(3, dim=1), torch.ones(b, 2)], dim=1)
    # prior rows: w_prior · (prior − pos) for every active position coordinate
    jp = torch.zeros(b, 2 * k_max, n_par, dtype=windows.dtype)
    for k in range(k_max):
        jp[:, 2 * k, 3 * k] = w_prior
        jp[:, 2 * k + 1, 3 * k + 1] = w_prior
    for _ in range(cfg.physics_iterations):
        r_t = pos[:, None, :, 0] + dt[None, :, None] * vel[:, None, None, 0]  # (B, T, K)
        c_t = pos[:, None, :, 1] + dt[None, :, None] * vel[:, None, None, 1]
        gr, dgr = _pixel_response(r_t, pix_r, sigma)  # (B, T, K, S)
        gc, dgc = _pixel_response(c_t, pix_c, sigma)
        img = torch.einsum("bk,btkp,btkq->btpq", br * active, gr, gc).reshape(b, t_len, -1)
        res = (y - img) * valid * w_noise  # (B, T, S²)
        a = (br * active)[:, None, :, None, None]
        d_r = (a * dgr[..., :, None] * gc[..., None, :]).reshape(b, t_len, k_max, -1)
        d_c = (a * gr[..., :, None] * dgc[..., None, :]).reshape(b, t_len, k_max, -1)
        d_b = (gr[..., :, None] * gc[..., None, :]).reshape(b, t_len, k_max, -1)
        d_vr = (d_r * dt[None, :, None, None]).sum(dim=2)  # (B, T, S²)
        d_vc = (d_c * dt[None, :, None, None]).sum(dim=2)
        per_k = torch.stack([d_r, d_c, d_b], dim=3).reshape(b, t_len, 3 * k_max, -1)
        jac = torch.cat([per_k, d_vr[:, :, None], d_vc[:, :, None]], dim=2)  # (B, T, P, 121)
        jac = (jac * valid[:, :, None, :] * w_noise).permute(0, 1, 3, 2).reshape(b, -1, n_par)
        rp = ((prior - pos) * w_prior).reshape(b, -1)
        jac = torch.cat([jac, jp], dim=1) * par_mask[:, None, :]
        res_all = torch.cat([res.reshape(b, -1), rp], dim=1)
        damping = 1e-3 * jac.pow(2).sum(dim=1) + 1e-6 + (1 - par_mask)
        step = _solve(jac, res_all, damping)
        upd = step[:, : 3 * k_max].view(b, k_max, 3)
        pos = pos + upd[..., :2].clamp(-0.2, 0.2) * active[..., None]
        br = (br + upd[..., 2]) * active
        vel = vel + step[:, 3 * k_max:].clamp(-0.1, 0.1)
    return pos, br


def extract_points(maps, windows=None, cfg: ExtractorConfig = ExtractorConfig(),
                   saturation=255.0):
    """Sub-pixel targets of each window's middle frame.

    Parameters
    ----------
    maps : ndarray or tensor of shape (B, 33, 33)
        Model output in grey levels (brightness-preserving maps).
    windows : ndarray or tensor of shape (B, 5, 11, 11), optional
        The LR frames of each window (grey levels); needed for ``refine="physics"``.
    saturation : float or ndarray of shape (B,)
        Level at which the windows' pixels clip: 255 for uint8 data, 255 − background for
        patches whose background was subtracted after clipping.

    Returns
    -------
    list of B ndarrays of shape (K_b, 3): (row, col, score) in patch pixels, float64.
    """
    maps_t = torch.as_tensor(np.asarray(maps), dtype=torch.float64)
    sat = torch.as_tensor(np.broadcast_to(np.asarray(saturation, dtype=np.float64),
                                          (maps_t.shape[0],)).copy())
    out: list[np.ndarray] = []
    with torch.no_grad():
        for s in range(0, maps_t.shape[0], cfg.chunk):
            m = maps_t[s:s + cfg.chunk]
            counts = estimate_counts(m, cfg)
            pos, bright = (_greedy_init(m, cfg.max_targets, cfg) if cfg.refine == "none"
                           else splat_fit(m, counts, cfg))
            pos_px = (pos - OFFSET) / RATIO
            if cfg.refine == "physics":
                if windows is None:
                    raise ValueError("refine='physics' needs the LR windows")
                w = torch.as_tensor(np.asarray(windows[s:s + cfg.chunk]), dtype=torch.float64)
                pos_px, bright = physics_fit(w, pos_px, bright, counts, cfg,
                                             sat[s:s + cfg.chunk])
            score = bright if cfg.score == "brightness" else m.clamp(min=0).sum(dim=(1, 2))[:, None]
            score = score.expand(-1, cfg.max_targets)
            for i in range(m.shape[0]):
                k = int(counts[i])
                pts = np.empty((k, 3))
                pts[:, :2] = pos_px[i, :k].numpy()
                pts[:, 2] = score[i, :k].numpy()
                out.append(pts)
    return out
