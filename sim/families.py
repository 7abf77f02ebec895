"""Scene families: how the targets of a trajectory are laid out, move and shine.

A *family* is a named :class:`~sim.trajectory.TrajectoryRules`; a *set* is one family or a
weighted mixture of them (:class:`Family`), drawn per trajectory. The layouts:

- ``paper``: SeqCSIST's '+' layout around a moving reference point
  (:func:`sim.trajectory.generate_trajectory`, unchanged).
- ``random``: K targets uniform in a disk of radius R around a centre moving at a speed from
  ``speed`` in a uniform random direction, pairwise at least s apart (R, s drawn per
  trajectory from ``radius`` and ``separation``); each target also drifts on its own at up
  to ``target_drift`` px/frame, and the separation holds at every frame.
- ``pixel``: CSIST-100K's rule: K targets uniform inside one pixel, pairwise at least
  ``separation_ru`` Rayleigh units apart (1 RU = 2 σ_PSF: 0.52 px at σ = 0.5); the layout
  moves rigidly, its speed capped so that every target stays inside that pixel at every
  frame.

Every layout can let each target's brightness change slowly (``brightness_change``; it
stays inside the ``brightness`` range).
:data:`PRESETS` names the recipes of ``python -m sim generate --preset``; docs/scenes.md
describes them. Positions are (row, col) in patch pixels, integer = pixel centre.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sim.geometry import SIGMA
from sim.trajectory import TrajectoryRules, generate_trajectory

#: Entropy word of the stream that picks each trajectory's family in a mixture.
FAMILY_STREAM = 0xFA
#: Rayleigh unit of a Gaussian PSF, in units of its σ.
RAYLEIGH_SIGMAS = 2.0
#: Rejection sampling: tries per target before a layout restarts, restarts before a
#: "random" disk grows by GROWTH (the drawn radius was too small for K at that separation).
TRIES, RESTARTS, GROWTH = 100, 20, 1.1
#: "pixel" layouts: sweeps of the hard-disk chain after its first allowed layout, and the
#: most sweeps before giving up (:func:`pixel_offsets`).
MIX_SWEEPS, MAX_SWEEPS = 30, 3000
LOCAL_STEP = 0.05


@dataclass(frozen=True)
class Family:
    """A named trajectory recipe and its weight in a mixture."""

    name: str
    rules: TrajectoryRules
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"family {self.name!r}: weight must be > 0, got {self.weight}")


def _preset(name: str, **fields) -> Family:
    return Family(name, TrajectoryRules(**fields))


_PAPER = _preset("paper")
_REALISTIC = _preset("realistic", layout="random", min_targets=1, max_targets=8,
                     brightness=(80.0, 250.0), brightness_change=0.005)
_CSIST100K = _preset("csist100k", layout="pixel", min_targets=1, max_targets=5,
                     target_drift=0.0)
_SINGLE = _preset("single", layout="random", min_targets=1, max_targets=1,
                  brightness=(80.0, 250.0), brightness_change=0.005)

#: The named recipes of ``python -m sim generate --preset``.
PRESETS: dict[str, tuple[Family, ...]] = {
    "paper": (_PAPER,),
    "csist100k": (_CSIST100K,),
    "realistic": (_REALISTIC,),
    "single": (_SINGLE,),
    "mixture": (_PAPER, dataclasses.replace(_REALISTIC, weight=2.0), _CSIST100K, _SINGLE),
}


def as_families(rules: TrajectoryRules | Sequence[Family] | None) -> tuple[Family, ...]:
    """One rule set or a mixture as a tuple of families (None: the paper's rules)."""
    if rules is None:
        return (_PAPER,)
    if isinstance(rules, TrajectoryRules):
        return (Family(rules.layout, rules),)
    families = tuple(rules)
    if not families:
        raise ValueError("a mixture needs at least one family")
    frames = {f.rules.frames for f in families}
    if len(frames) > 1:
        raise ValueError(f"the families of a mixture must share one trajectory length, got "
                         f"{sorted(frames)} frames")
    return families


def override(families: Sequence[Family], **fields) -> tuple[Family, ...]:
    """The families with the given TrajectoryRules fields replaced in every one of them
    (``None`` values are ignored)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    return tuple(dataclasses.replace(f, rules=dataclasses.replace(f.rules, **fields))
                 for f in families)


def rayleigh_px(sigma: float) -> float:
    """One Rayleigh unit of a Gaussian PSF of std ``sigma`` px, in px."""
    return RAYLEIGH_SIGMAS * sigma


def _pairwise_ok(points: np.ndarray, new: np.ndarray, separation: float) -> bool:
    return bool(np.all(np.hypot(*(points - new).T) >= separation)) if len(points) else True


def _scatter(rng: np.random.Generator, k: int, draw, separation: float) -> np.ndarray | None:
    """K points (K, 2) drawn one by one with ``draw(rng)``, each at least ``separation`` from
    the ones before, or None when RESTARTS restarts of TRIES tries each all failed."""
    for _ in range(RESTARTS):
        points = np.zeros((0, 2))
        for _ in range(k):
            for _ in range(TRIES):
                candidate = draw(rng)
                if _pairwise_ok(points, candidate, separation):
                    points = np.vstack([points, candidate])
                    break
            else:
                break
        if len(points) == k:
            return points
    return None


def disk_offsets(rng: np.random.Generator, k: int, radius: float,
                 separation: float) -> np.ndarray:
    """K offsets (K, 2) uniform in a disk of ``radius`` px, pairwise ≥ ``separation`` px.

    Where K targets at that separation do not fit in the disk, the disk grows by GROWTH until
    they do (so dense draws keep their separation and are only as wide as they must be).
    """
    def draw(g):
        r, angle = radius * math.sqrt(g.uniform()), g.uniform(0.0, 2 * math.pi)
        return np.array([r * math.cos(angle), r * math.sin(angle)])

    while True:
        points = _scatter(rng, k, draw, separation)
        if points is not None:
            return points
        radius *= GROWTH


def _nearest(points: np.ndarray, i: int, candidate: np.ndarray) -> float:
    """Distance from ``candidate`` to the nearest point of ``points`` other than point i."""
    gaps = np.hypot(*(np.delete(points, i, axis=0) - candidate).T)
    return float(gaps.min()) if len(gaps) else math.inf


def pixel_offsets(rng: np.random.Generator, k: int, separation: float) -> np.ndarray:
    """K offsets (K, 2) uniform in [−½, ½)² (one pixel around its centre), pairwise ≥
    ``separation`` px. Raises ValueError when that many targets do not fit.

    Hard-disk Monte Carlo: from K uniform points, each move redraws one point (uniformly in
    the pixel, or a Gaussian step of LOCAL_STEP px from where it is) and is taken when it
    keeps that point's nearest neighbour at least min(separation, its current distance);
    once every pair is ``separation`` apart the moves are exactly those of the hard-disk
    Metropolis chain, whose stationary law is the uniform law on the allowed layouts, and
    MIX_SWEEPS more sweeps of K moves mix it. (Rejection of
    whole layouts accepts 5 in 10⁶ draws for 5 targets at 0.52 px.)
    """
    points = rng.uniform(-0.5, 0.5, size=(k, 2))
    mixed = 0
    for _ in range(MAX_SWEEPS):
        for i in range(k):
            candidate = (rng.uniform(-0.5, 0.5, size=2) if rng.uniform() < 0.5
                         else points[i] + rng.normal(0.0, LOCAL_STEP, size=2))
            if np.any(np.abs(candidate) > 0.5) or candidate.max() == 0.5:
                continue  # outside the pixel
            if _nearest(points, i, candidate) >= min(separation,
                                                     _nearest(points, i, points[i])):
                points[i] = candidate
        feasible = k < 2 or min(_nearest(points, i, points[i]) for i in range(k)) >= separation
        mixed = mixed + 1 if feasible else 0
        if mixed >= MIX_SWEEPS:
            return points
    raise ValueError(
        f"cannot place {k} targets inside one pixel pairwise {separation:.3f} px apart; "
        "lower the target count, separation_ru or the PSF sigma"
    )


def _heading(rng: np.random.Generator, speed: float) -> np.ndarray:
    angle = rng.uniform(0.0, 2 * math.pi)
    return speed * np.array([math.sin(angle), math.cos(angle)])


def drift_velocities(rng: np.random.Generator, k: int, max_speed: float) -> np.ndarray:
    """K independent drift velocities (K, 2), px/frame: speed U(0, max_speed), direction
    uniform."""
    return np.array([_heading(rng, rng.uniform(0.0, max_speed)) for _ in range(k)]).reshape(k, 2)


def _random_motion(rng, rules: TrajectoryRules, offsets: np.ndarray,
                   separation: float) -> np.ndarray:
    """Relative positions (T, K, 2) of a "random" group: offsets plus the group's velocity and
    each target's drift times the frame; drifts are redrawn (at most TRIES times, then off)
    until the separation holds at every frame."""
    t = np.arange(rules.frames, dtype=np.float64)[:, None, None]
    group = _heading(rng, rng.uniform(*rules.speed))
    k = len(offsets)
    for _ in range(TRIES):
        drift = drift_velocities(rng, k, rules.target_drift)
        rel = offsets[None] + (group[None] + drift)[None] * t
        if k < 2:
            return rel
        gaps = np.hypot(*(rel[:, :, None] - rel[:, None, :]).transpose(3, 0, 1, 2))
        if np.all(gaps[:, ~np.eye(k, dtype=bool)] >= separation):
            return rel
    return offsets[None] + group[None, None] * t


def _place(rng, rules: TrajectoryRules, rel: np.ndarray) -> np.ndarray:
    """Absolute positions (T, K, 2): a start drawn uniformly among those that keep every
    target ``edge`` px inside the patch's outer pixel centres at every frame."""
    lo = rules.edge - rel.min(axis=(0, 1))
    hi = rules.patch - 1 - rules.edge - rel.max(axis=(0, 1))
    if np.any(lo > hi):
        span = rel.max(axis=(0, 1)) - rel.min(axis=(0, 1))
        raise ValueError(
            f"a group spanning {span.max():.2f} px over {rules.frames} frames does not fit a "
            f"{rules.patch}-px patch with edge {rules.edge}; lower speed, radius or frames"
        )
    return rel + rng.uniform(lo, hi)[None, None]


def _pixel_motion(rng, rules: TrajectoryRules, offsets: np.ndarray) -> np.ndarray:
    """Absolute positions (T, K, 2) of a "pixel" layout: a pixel drawn with its centre at
    least ``edge`` + ½ px inside, the layout moving rigidly at a speed from ``speed``, capped
    so that every target stays inside the pixel (half-open [c − ½, c + ½)) at every frame."""
    first = math.ceil(rules.edge + 0.5)
    centre = rng.integers(first, rules.patch - first, size=2).astype(np.float64)
    velocity = _heading(rng, rng.uniform(*rules.speed))
    steps = max(rules.frames - 1, 1)
    room_minus = offsets.min(axis=0) + 0.5  # how far the layout may move towards −
    room_plus = 0.5 - offsets.max(axis=0) - 1e-9  # … and towards + before it leaves
    scale = 1.0
    for axis in range(2):
        room = room_plus[axis] if velocity[axis] > 0 else room_minus[axis]
        travel = abs(velocity[axis]) * steps
        if travel > room:
            scale = min(scale, max(room, 0.0) / travel)
    t = np.arange(rules.frames, dtype=np.float64)[:, None, None]
    return centre + offsets[None] + (scale * velocity)[None, None] * t


def family_trajectory(rng: np.random.Generator, rules: TrajectoryRules,
                      sigma: float = SIGMA) -> np.ndarray:
    """One trajectory of a family: shape (frames, K, 3) = (row, col, brightness) per target.

    ``sigma`` (PSF std, px) sets the "pixel" layout's separation in Rayleigh units. The
    paper layout draws exactly what :func:`sim.trajectory.generate_trajectory` draws.
    """
    if rules.layout == "paper":
        out = generate_trajectory(rng, rules)
    else:
        k = int(rng.integers(rules.min_targets, rules.max_targets + 1))
        if rules.layout == "random":
            separation = rng.uniform(*rules.separation)
            offsets = disk_offsets(rng, k, rng.uniform(*rules.radius), separation)
            pos = _place(rng, rules, _random_motion(rng, rules, offsets, separation))
        else:
            offsets = pixel_offsets(rng, k, rules.separation_ru * rayleigh_px(sigma))
            pos = _pixel_motion(rng, rules, offsets)
        out = np.empty((rules.frames, k, 3))
        out[..., :2] = pos
        out[..., 2] = rng.uniform(*rules.brightness, size=k)[None]
    if rules.brightness_change > 0:
        rate = rng.uniform(-rules.brightness_change, rules.brightness_change, out.shape[1])
        ramp = 1.0 + rate[None] * np.arange(rules.frames)[:, None]
        out[..., 2] = np.clip(out[..., 2] * ramp, *rules.brightness)
    return out


def family_indices(n: int, seed: int, families: Sequence[Family]) -> np.ndarray:
    """Family index (n,) of each trajectory of a mixture, drawn by weight (zeros for one)."""
    if len(families) == 1:
        return np.zeros(n, dtype=np.int64)
    weights = np.array([f.weight for f in families], dtype=np.float64)
    rng = np.random.default_rng([seed, FAMILY_STREAM])
    return rng.choice(len(families), size=n, p=weights / weights.sum())


def generate_trajectories(
    n: int, seed: int, rules: TrajectoryRules | Sequence[Family] | None = None,
    sigma: float = SIGMA,
) -> np.ndarray:
    """n trajectories, NaN-padded to the largest K: shape (n, frames, K_max, 3).

    ``rules`` is one rule set or a mixture of families (each trajectory's family drawn by
    weight, :func:`family_indices`). Deterministic per seed: trajectory i draws from its own
    child stream, so the first m trajectories of a seed do not depend on n.
    """
    families = as_families(rules)
    which = family_indices(n, seed, families)
    frames = families[0].rules.frames
    k_max = max(f.rules.max_targets for f in families)
    streams = np.random.SeedSequence(seed).spawn(n)
    out = np.full((n, frames, k_max, 3), np.nan)
    for i, ss in enumerate(streams):
        t = family_trajectory(np.random.default_rng(ss), families[which[i]].rules, sigma)
        out[i, :, : t.shape[1]] = t
    return out
