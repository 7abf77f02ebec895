"""Trajectory rules: the SeqCSIST layout (paper §III as clarified in docs/reference.md §7) and
the scene families of :mod:`sim.families` (``layout`` "random" and "pixel", docs/scenes.md).

Layout "paper": a reference point (no intensity) starts at an integer row x0 ∈ {1..9} (pixel-centre
coordinates) and a column f(x0), where f is a random quadratic, circle arc or straight line.
Each frame it moves 0.04 px along the row axis (+ if x0 < 5, else −) and follows f.
K targets sit 0.3 px from it, one per distinct direction among up/down/left/right; every frame
each target drifts further away from the reference by U(0, 0.0014) px (cumulative).
Brightness is U[220, 250] per target, constant along the trajectory.

The other layouts are drawn by :func:`sim.families.family_trajectory`; this module keeps the
paper's draws exactly as they were (the same seed gives the same paper trajectories).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.geometry import PATCH

# (d_row, d_col) unit vectors: up, down, left, right.
DIRECTIONS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
CURVES = ("quadratic", "circle", "line")
LAYOUTS = ("paper", "random", "pixel")
MAX_SLOPE = 2.0  # |df/dx| bound: rejects circle arcs that reach their vertical tangent


@dataclass(frozen=True)
class TrajectoryRules:
    """Knobs of the generator; defaults are the paper's.

    Fields used by every layout: ``layout``, ``frames``, ``min_targets``/``max_targets``,
    ``brightness`` (grey levels, per target U[lo, hi]), ``brightness_change``, ``patch``.
    Layout "paper" also uses ``spacing``, ``row_speed``, ``max_drift`` and ``margin``; the
    families "random" and "pixel" use ``speed``, ``target_drift``, ``radius``,
    ``separation``, ``separation_ru`` and ``edge`` (docs/scenes.md gives the recipes).

    Attributes
    ----------
    layout : {"paper", "random", "pixel"}
        "paper": the '+' layout around a reference point (SeqCSIST); "random": K targets in a
        disk of radius ``radius`` around a moving centre, pairwise at least ``separation``
        apart; "pixel": CSIST-100K's rule, K targets uniform inside one pixel, pairwise at
        least ``separation_ru`` Rayleigh units (2 σ_PSF) apart, moving as a rigid layout that
        stays inside that pixel.
    brightness_change : float
        Largest relative brightness change per frame: each target's brightness follows
        b·(1 + r·t) with r ~ U(−c, c) per target (0: constant, the paper's rule).
    speed : tuple of float
        Range of the group's speed (px/frame), in a uniform random direction.
    target_drift : float
        Largest speed (px/frame) of each target's own drift, in a uniform random direction,
        on top of the group's motion ("random" only; a "pixel" layout is rigid).
    radius, separation : tuple of float
        Ranges of the disk radius and of the pairwise minimum separation (px), one draw of
        each per trajectory ("random").
    separation_ru : float
        Pairwise minimum separation of a "pixel" layout in Rayleigh units (1 RU = 2 σ_PSF).
    edge : float
        "random" and "pixel": every target stays at least this far (px) from the patch's
        outer pixel centres at every frame.
    """

    frames: int = 20
    min_targets: int = 2
    max_targets: int = 4
    spacing: float = 0.3  # initial distance target ↔ reference (px)
    row_speed: float = 0.04  # reference motion along rows (px/frame)
    max_drift: float = 0.0014  # per-frame outward drift upper bound (px)
    brightness: tuple[float, float] = (220.0, 250.0)
    patch: int = PATCH
    margin: float = 1.5  # the reference column stays within [margin, patch − 1 − margin]
    layout: str = "paper"
    brightness_change: float = 0.0
    speed: tuple[float, float] = (0.0, 0.06)
    target_drift: float = 0.01
    radius: tuple[float, float] = (0.4, 1.2)
    separation: tuple[float, float] = (0.3, 0.5)
    separation_ru: float = 0.52
    edge: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_targets <= self.max_targets:
            raise ValueError(
                f"target range {self.min_targets}-{self.max_targets} is invalid; "
                "use 1 <= min <= max"
            )
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is unknown; use one of {list(LAYOUTS)}")
        if self.layout == "paper" and self.max_targets > 8:
            raise ValueError("the paper layout places at most 8 targets (4 axis directions "
                             "and 4 diagonals); use layout 'random' for more")
        for name in ("brightness", "speed", "radius", "separation"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} range {lo}..{hi} is invalid; use 0 <= low <= high")
        if self.brightness[1] <= 0:
            raise ValueError("brightness range must reach above 0 grey levels")
        if not 0 <= self.brightness_change <= 0.5 / max(self.frames - 1, 1):
            raise ValueError(
                f"brightness_change {self.brightness_change} is out of range; use 0 (constant) "
                f"up to {0.5 / max(self.frames - 1, 1):.4g} per frame, so that no target "
                "loses more than half its brightness over a trajectory"
            )
        if self.target_drift < 0 or self.separation_ru < 0 or self.edge < 0:
            raise ValueError("target_drift, separation_ru and edge must be >= 0")


def _directions(k: int, rng: np.random.Generator) -> np.ndarray:
    """K unit directions: distinct axis directions first, then evenly spread extra ones.

    K ≤ 4 follows the paper (distinct among up/down/left/right). The 2–8 target variant
    (Table VI) needs more; extra targets take the diagonals, also distinct.
    """
    if k <= 4:
        return DIRECTIONS[rng.choice(4, size=k, replace=False)]
    diag = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=np.float64) / np.sqrt(2.0)
    extra = diag[rng.choice(4, size=k - 4, replace=False)]
    return np.concatenate([DIRECTIONS, extra])


def _curve(x0: float, y0: float, kind: str, rng: np.random.Generator):
    """A function f(x) with f(x0) = y0 describing the reference column along its path."""
    if kind == "line":
        slope = rng.uniform(-1.5, 1.5)
        return lambda x: y0 + slope * (x - x0)
    if kind == "quadratic":
        a, b = rng.uniform(-1.0, 1.0), rng.uniform(-0.6, 0.6)
        return lambda x: y0 + a * (x - x0) + b * (x - x0) ** 2
    radius = rng.uniform(2.0, 6.0)
    phase = rng.uniform(0.25, 0.75) * np.pi  # keeps the arc away from its vertical tangent
    side = rng.choice([-1.0, 1.0])
    xc = x0 - radius * np.cos(phase)
    yc = y0 - side * radius * np.sin(phase)
    return lambda x: yc + side * np.sqrt(np.maximum(radius**2 - (x - xc) ** 2, 0.0))


def generate_trajectory(
    rng: np.random.Generator, rules: TrajectoryRules | None = None
) -> np.ndarray:
    """One trajectory: ndarray of shape (frames, K, 3) = (row, col, brightness) per target."""
    rules = TrajectoryRules() if rules is None else rules
    lo, hi = rules.margin, rules.patch - 1 - rules.margin
    x0 = float(rng.integers(1, rules.patch - 1))  # 1..9 on an 11-px patch
    v = rules.row_speed if x0 < (rules.patch - 1) / 2 else -rules.row_speed
    xs = x0 + v * np.arange(rules.frames)
    for _ in range(100):
        f = _curve(x0, rng.uniform(lo, hi), CURVES[rng.integers(len(CURVES))], rng)
        ys = f(xs)
        steep = np.abs(np.diff(ys)).max(initial=0.0) > MAX_SLOPE * rules.row_speed
        if np.all((ys >= lo) & (ys <= hi)) and not steep:
            break
    else:  # pragma: no cover - practically unreachable; keep the column fixed
        ys = np.full_like(xs, (lo + hi) / 2)
    k = int(rng.integers(rules.min_targets, rules.max_targets + 1))
    dirs = _directions(k, rng)  # (K, 2)
    drift = rng.uniform(0.0, rules.max_drift, size=(rules.frames, k))
    drift[0] = 0.0
    dist = rules.spacing + np.cumsum(drift, axis=0)  # (T, K)
    ref = np.stack([xs, ys], axis=1)  # (T, 2)
    pos = ref[:, None, :] + dist[..., None] * dirs[None]  # (T, K, 2)
    bright = rng.uniform(*rules.brightness, size=k)
    out = np.empty((rules.frames, k, 3))
    out[..., :2] = pos
    out[..., 2] = bright[None, :]
    return out
