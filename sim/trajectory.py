"""SeqCSIST trajectory rules (paper §III as clarified in docs/reference.md §7).

A reference point (no intensity) starts at an integer row x0 ∈ {1..9} (pixel-centre
coordinates) and a column f(x0), where f is a random quadratic, circle arc or straight line.
Each frame it moves 0.04 px along the row axis (+ if x0 < 5, else −) and follows f.
K targets sit 0.3 px from it, one per distinct direction among up/down/left/right; every frame
each target drifts further away from the reference by U(0, 0.0014) px (cumulative).
Brightness is U[220, 250] per target, constant along the trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.geometry import PATCH

# (d_row, d_col) unit vectors: up, down, left, right.
DIRECTIONS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
CURVES = ("quadratic", "circle", "line")
MAX_SLOPE = 2.0  # |df/dx| bound: rejects circle arcs that reach their vertical tangent


@dataclass(frozen=True)
class TrajectoryRules:
    """Knobs of the generator; defaults are the paper's."""

    frames: int = 20
    min_targets: int = 2
    max_targets: int = 4
    spacing: float = 0.3  # initial distance target ↔ reference (px)
    row_speed: float = 0.04  # reference motion along rows (px/frame)
    max_drift: float = 0.0014  # per-frame outward drift upper bound (px)
    brightness: tuple[float, float] = (220.0, 250.0)
    patch: int = PATCH
    margin: float = 1.5  # the reference column stays within [margin, patch − 1 − margin]

    def __post_init__(self) -> None:
        if not 1 <= self.min_targets <= self.max_targets:
            raise ValueError(
                f"target range {self.min_targets}-{self.max_targets} is invalid; "
                "use 1 <= min <= max"
            )
        if self.frames < 1:
            raise ValueError("frames must be >= 1")


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


def generate_trajectories(
    n: int, seed: int, rules: TrajectoryRules | None = None
) -> np.ndarray:
    """n trajectories, NaN-padded to the largest K: shape (n, frames, max_targets, 3).

    Deterministic per seed: trajectory i draws from its own child stream, so the first m
    trajectories of a seed do not depend on n.
    """
    rules = TrajectoryRules() if rules is None else rules
    streams = np.random.SeedSequence(seed).spawn(n)
    out = np.full((n, rules.frames, rules.max_targets, 3), np.nan)
    for i, ss in enumerate(streams):
        t = generate_trajectory(np.random.default_rng(ss), rules)
        out[i, :, : t.shape[1]] = t
    return out
