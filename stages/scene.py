"""Scene simulator: full IR frames with several moving CSO groups (pure numpy).

Each CSO group is laid out by one of the scene families' layouts (``layout``,
:mod:`sim.families`, docs/scenes.md): "random" (K targets in a disk, pairwise at least a
separation apart, each drifting slowly on its own within 1.25 × the disk's radius), "pixel"
(CSIST-100K's: K targets inside one pixel, pairwise ``separation_ru`` Rayleigh units apart,
moving rigidly) or, by default, "paper": the SeqCSIST rules (docs/reference.md §7,
:mod:`sim.trajectory`) at scene scale:

- 2–4 sub-targets sit ``spacing`` (0.3 px) from an intensity-less reference point, one per
  distinct direction among up/down/left/right; each frame every sub-target drifts outwards by
  U(0, ``max_drift``) px. A SeqCSIST trajectory lasts 20 frames, a scene group hundreds, so the
  offset is capped at ``max_spread`` (default: the largest offset a 20-frame trajectory
  reaches) to keep live groups inside the distribution the unmixer was trained on.
- Brightness is U[220, 250] per sub-target, constant while the group lives.
- The reference moves with a constant speed along a heading that turns by a constant rate
  per group (a circular arc: the "curve" of the rules). The default speed range,
  0.03–0.1 px/frame, is SeqCSIST's scale (0.04 px/frame along rows plus the curve's column
  motion): the shipped unmixers learned that motion within a 5-frame window, and faster
  groups smear their windows (measured live CSO-mAP: 0.90 at this speed, 0.53 at 0.1–0.5
  px/frame, clean frames).
- References stay more than ``min_separation`` px apart and at least ``border`` px inside
  the frame; a group that leaves that region, or comes too close to another object, is
  respawned elsewhere with a new id.

Targets are rendered as pixel-integrated Gaussians (the :mod:`sim.render` model), each only
into a small window around itself, on top of a background level, an optional smooth
gradient, an optional textured scene (``scene``: the IR-like scenes of :mod:`sim.clutter` or
your own frames, panning slowly if asked), optional clutter (slow single bright points) and
white Gaussian noise.
Positions are (row, col) in frame pixels, integer = pixel centre. Deterministic per seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from sim.backgrounds import BUILTIN, read_background_images
from sim.clutter import builtin_scenes
from sim.families import disk_offsets, drift_velocities, pixel_offsets, rayleigh_px
from sim.phi import SIGMA, pixel_response
from sim.trajectory import DIRECTIONS, LAYOUTS, TrajectoryRules

_RULES = TrajectoryRules()
#: Largest sub-target offset a 20-frame SeqCSIST trajectory reaches (px).
SEQCSIST_MAX_SPREAD = _RULES.spacing + (_RULES.frames - 1) * _RULES.max_drift
#: Most sub-targets per group of each layout.
LAYOUT_MAX_TARGETS = {"paper": len(DIRECTIONS), "random": 8, "pixel": 5}
#: A "random" target's own drift turns back once it is this many disk radii from the centre.
DRIFT_BOUND = 1.25


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene; sub-target rules default to SeqCSIST's.

    Attributes
    ----------
    height, width : int
        Frame size in pixels.
    groups : int
        Number of CSO groups kept in the scene at all times.
    layout : {"paper", "random", "pixel"}
        How a group's sub-targets are laid out (module docstring).
    min_targets, max_targets : int
        Sub-targets per group (1..4 for "paper", 1..8 "random", 1..5 "pixel").
    radius, separation : tuple of float
        "random": ranges of the disk radius and of the pairwise minimum separation (px).
    separation_ru : float
        "pixel": pairwise minimum separation in Rayleigh units (2 ``psf_sigma``).
    target_drift : float
        "random": largest speed of each sub-target's own drift (px/frame).
    spacing : float
        Initial sub-target offset from the reference (px).
    max_drift : float
        Upper bound of the per-frame outward drift of each sub-target (px).
    max_spread : float
        Cap of the sub-target offset (px).
    brightness : tuple of float
        Range of the sub-target brightness (grey levels, integrated over the PSF).
    speed : tuple of float
        Range of the reference speed (px/frame).
    max_turn : float
        Largest heading change per frame (rad/frame); each group draws U(−max_turn, max_turn).
    min_separation : float
        Minimum distance between the references of any two objects (px).
    border : float
        References stay at least this far from the frame edge (px).
    background : float
        Background level (grey levels).
    gradient : float
        Peak-to-peak amplitude of a smooth linear background ramp (grey levels, 0 = flat).
    noise_sigma : float
        Standard deviation of the additive white Gaussian noise (grey levels).
    gain : float
        Shot noise: grey levels per photo-electron; each pixel's expected level μ becomes
        gain · Poisson(μ / gain), as in :func:`sim.render.render_uint8` (0: none).
    clutter : int
        Number of clutter objects: single bright points, static or slow.
    clutter_brightness : tuple of float
        Range of the clutter brightness (grey levels).
    clutter_speed : float
        Largest clutter speed (px/frame).
    scene : str or None
        A textured background under everything: ``"builtin"`` (one of the IR-like scenes of
        :mod:`sim.clutter`: photographs made IR-like, 1/f clutter, clouds, horizons,
        buildings, with fixed-pattern noise and defects) or a folder of your own IR frames
        (8/16-bit or float images); one is drawn per simulator, scaled to cover the frame.
        None: a flat background.
    scene_amplitude : float
        Grey levels of the scene's full scale: the difficulty knob (20 easy, 40 medium, 80
        hard; the targets' peak pixel is about 100–115).
    scene_drift : float
        Speed of a slow pan of the scene (px/frame, random direction; 0 = static).
    psf_sigma : float
        PSF standard deviation (px).
    quantize : bool
        Round and saturate to 0..255 and emit uint8 frames, like the 8-bit SeqCSIST frames
        (docs/reference.md §1.4); off: float32 frames, unclipped.
    """

    height: int = 256
    width: int = 256
    groups: int = 6
    layout: str = "paper"
    radius: tuple[float, float] = _RULES.radius
    separation: tuple[float, float] = _RULES.separation
    separation_ru: float = _RULES.separation_ru
    target_drift: float = 0.002
    min_targets: int = _RULES.min_targets
    max_targets: int = _RULES.max_targets
    spacing: float = _RULES.spacing
    max_drift: float = _RULES.max_drift
    max_spread: float = SEQCSIST_MAX_SPREAD
    brightness: tuple[float, float] = _RULES.brightness
    speed: tuple[float, float] = (0.03, 0.1)
    max_turn: float = 0.01
    min_separation: float = 15.0
    border: float = 12.0
    background: float = 20.0
    gradient: float = 0.0
    noise_sigma: float = 1.0
    gain: float = 0.0
    clutter: int = 0
    clutter_brightness: tuple[float, float] = (60.0, 160.0)
    clutter_speed: float = 0.05
    psf_sigma: float = SIGMA
    quantize: bool = True
    scene: str | None = None
    scene_amplitude: float = 40.0
    scene_drift: float = 0.0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is unknown; use one of {list(LAYOUTS)}")
        most = LAYOUT_MAX_TARGETS[self.layout]
        if not 1 <= self.min_targets <= self.max_targets <= most:
            raise ValueError(
                f"targets per group {self.min_targets}-{self.max_targets} is invalid for layout "
                f"{self.layout!r}; use 1 <= min_targets <= max_targets <= {most}"
            )
        if self.target_drift < 0 or self.separation_ru < 0:
            raise ValueError("target_drift and separation_ru must be >= 0")
        if min(self.height, self.width) <= 2 * self.border:
            raise ValueError(
                f"frame {self.height}x{self.width} leaves no room inside a border of "
                f"{self.border} px; enlarge the frame or reduce border"
            )
        for name in ("groups", "clutter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("brightness", "speed", "clutter_brightness", "radius", "separation"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} range {lo}..{hi} is invalid; use 0 <= low <= high")
        if self.noise_sigma < 0 or self.psf_sigma <= 0 or self.gain < 0:
            raise ValueError("noise_sigma and gain must be >= 0 and psf_sigma > 0")
        if self.scene_amplitude < 0 or self.scene_drift < 0:
            raise ValueError("scene_amplitude and scene_drift must be >= 0")


@dataclass(frozen=True)
class SceneTruth:
    """Ground truth of one frame (all positions in frame pixels, (row, col)).

    Attributes
    ----------
    group_ids : ndarray of shape (G,), int64
        Stable id of each CSO group (a respawned group gets a new id).
    references : ndarray of shape (G, 2), float64
        Reference point of each group.
    targets : ndarray of shape (T, 3), float64
        (row, col, brightness) of every sub-target of every group.
    target_group : ndarray of shape (T,), int64
        Group id of each sub-target.
    clutter : ndarray of shape (M, 3), float64
        (row, col, brightness) of the clutter points.
    """

    group_ids: np.ndarray
    references: np.ndarray
    targets: np.ndarray
    target_group: np.ndarray
    clutter: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    def group_targets(self, group_id: int) -> np.ndarray:
        """Sub-targets (K, 3) of one group."""
        return self.targets[self.target_group == group_id]


@dataclass
class _Object:
    """A moving object: a CSO group (K sub-targets) or a clutter point (K = 1, no offset)."""

    object_id: int
    reference: np.ndarray  # (2,)
    speed: float
    heading: float  # rad, 0 = +col
    turn: float  # rad/frame
    directions: np.ndarray  # (K, 2) unit vectors (zeros for clutter and non-paper layouts)
    offset: np.ndarray  # (K,) current distance from the reference along them
    brightness: np.ndarray  # (K,)
    is_clutter: bool
    shape: np.ndarray | None = None  # (K, 2) offsets of a "random" or "pixel" layout
    drift: np.ndarray | None = None  # (K, 2) px/frame of each sub-target's own drift
    bound: float = 0.0  # "random": distance from the reference at which a drift turns back

    def positions(self) -> np.ndarray:
        pos = self.reference[None, :] + self.offset[:, None] * self.directions
        return pos if self.shape is None else pos + self.shape


class SceneSimulator:
    """Generates frames and their truth, one :meth:`step` per frame.

    Parameters
    ----------
    config : SceneConfig
        Scene knobs.
    seed : int
        Seed of the single random stream; the same seed gives the same frames.
    """

    def __init__(self, config: SceneConfig = SceneConfig(), seed: int = 0) -> None:
        self.config = config
        self._rng = np.random.default_rng(seed)
        self._next_id = 0
        self._radius = int(math.ceil(4 * config.psf_sigma)) + 1
        self._static = self._background()
        self._scene = self._scene_image()
        self._pan = self._rng.uniform(0, 2 * np.pi) if config.scene else 0.0
        self._frame = 0
        self._objects: list[_Object] = []
        for is_clutter in [False] * config.groups + [True] * config.clutter:
            self._objects.append(self._spawn(is_clutter))

    def _background(self) -> np.ndarray:
        """Background level plus a smooth linear ramp of random direction (H, W) float32."""
        cfg = self.config
        level = np.full((cfg.height, cfg.width), cfg.background, dtype=np.float32)
        if cfg.gradient == 0:
            return level
        angle = self._rng.uniform(0, 2 * np.pi)
        rows = np.arange(cfg.height, dtype=np.float32)[:, None] / max(cfg.height - 1, 1)
        cols = np.arange(cfg.width, dtype=np.float32)[None, :] / max(cfg.width - 1, 1)
        ramp = np.cos(angle) * rows + np.sin(angle) * cols
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-12)
        return level + (cfg.gradient * (ramp - 0.5)).astype(np.float32)

    def _scene_image(self) -> np.ndarray | None:
        """The textured scene (H, W) float32 in grey levels, or None without ``scene``."""
        cfg = self.config
        if cfg.scene is None:
            return None
        if cfg.scene == BUILTIN:
            images = builtin_scenes(self._rng, per_kind=1)
        else:
            images = read_background_images(cfg.scene)
        image = images[int(self._rng.integers(len(images)))].astype(np.float32)
        scale = max(cfg.height / image.shape[0], cfg.width / image.shape[1])
        if scale > 1:  # cover the frame
            size = (math.ceil(image.shape[1] * scale), math.ceil(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        r0 = int(self._rng.integers(image.shape[0] - cfg.height + 1))
        c0 = int(self._rng.integers(image.shape[1] - cfg.width + 1))
        crop = image[r0:r0 + cfg.height, c0:c0 + cfg.width]
        return np.ascontiguousarray(cfg.scene_amplitude * crop, dtype=np.float32)

    def _scene_now(self) -> np.ndarray:
        """The scene at the current frame: panned by ``scene_drift`` px per frame (bilinear,
        mirrored at the edges)."""
        cfg = self.config
        if cfg.scene_drift == 0:
            return self._scene
        shift = self._frame * cfg.scene_drift
        warp = np.float32([[1, 0, shift * np.cos(self._pan)], [0, 1, shift * np.sin(self._pan)]])
        return cv2.warpAffine(self._scene, warp, (cfg.width, cfg.height),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def _inside(self, point: np.ndarray) -> bool:
        cfg = self.config
        return bool(
            cfg.border <= point[0] <= cfg.height - 1 - cfg.border
            and cfg.border <= point[1] <= cfg.width - 1 - cfg.border
        )

    def _far_from_others(self, point: np.ndarray, skip: _Object | None = None) -> bool:
        for other in self._objects:
            if other is skip:
                continue
            if np.hypot(*(other.reference - point)) <= self.config.min_separation:
                return False
        return True

    def _spawn(self, is_clutter: bool, replacing: _Object | None = None) -> _Object:
        cfg, rng = self.config, self._rng
        for _ in range(1000):
            point = np.array(
                [
                    rng.uniform(cfg.border, cfg.height - 1 - cfg.border),
                    rng.uniform(cfg.border, cfg.width - 1 - cfg.border),
                ]
            )
            if self._far_from_others(point, skip=replacing):
                break
        else:
            raise ValueError(
                f"cannot place {cfg.groups + cfg.clutter} objects {cfg.min_separation} px apart "
                f"in a {cfg.height}x{cfg.width} frame; reduce groups/clutter or min_separation"
            )
        if is_clutter:
            k, speed, turn = 1, rng.uniform(0.0, cfg.clutter_speed), 0.0
            directions = np.zeros((1, 2))
            offset = np.zeros(1)
            brightness = rng.uniform(*cfg.clutter_brightness, size=1)
        else:
            k = int(rng.integers(cfg.min_targets, cfg.max_targets + 1))
            speed = rng.uniform(*cfg.speed)
            turn = rng.uniform(-cfg.max_turn, cfg.max_turn)
            if cfg.layout == "paper":
                directions = DIRECTIONS[rng.choice(len(DIRECTIONS), size=k, replace=False)]
                offset = np.full(k, cfg.spacing)
            else:
                directions, offset = np.zeros((k, 2)), np.zeros(k)
            brightness = rng.uniform(*cfg.brightness, size=k)
        shape, drift, bound = self._layout(k) if not is_clutter else (None, None, 0.0)
        obj = _Object(
            object_id=self._next_id,
            reference=point,
            speed=speed,
            heading=rng.uniform(0, 2 * np.pi),
            turn=turn,
            directions=directions,
            offset=offset,
            brightness=brightness,
            is_clutter=is_clutter,
            shape=shape,
            drift=drift,
            bound=bound,
        )
        self._next_id += 1
        return obj

    def _layout(self, k: int):
        """(shape (K, 2), drift (K, 2), bound) of a new "random" or "pixel" group; Nones and
        0 for "paper" (its offsets live in directions and offset)."""
        cfg, rng = self.config, self._rng
        if cfg.layout == "random":
            radius = rng.uniform(*cfg.radius)
            shape = disk_offsets(rng, k, radius, rng.uniform(*cfg.separation))
            return shape, drift_velocities(rng, k, cfg.target_drift), DRIFT_BOUND * radius
        if cfg.layout == "pixel":
            shape = pixel_offsets(rng, k, cfg.separation_ru * rayleigh_px(cfg.psf_sigma))
            return shape, np.zeros((k, 2)), 0.0
        return None, None, 0.0

    def truth(self) -> SceneTruth:
        """Ground truth of the current state."""
        groups = [o for o in self._objects if not o.is_clutter]
        clutter = [o for o in self._objects if o.is_clutter]
        targets = [np.column_stack([o.positions(), o.brightness]) for o in groups]
        return SceneTruth(
            group_ids=np.array([o.object_id for o in groups], dtype=np.int64),
            references=np.array([o.reference for o in groups], dtype=np.float64).reshape(-1, 2),
            targets=np.concatenate(targets).reshape(-1, 3) if targets else np.zeros((0, 3)),
            target_group=np.concatenate(
                [np.full(len(o.offset), o.object_id, dtype=np.int64) for o in groups]
            )
            if groups
            else np.zeros(0, dtype=np.int64),
            clutter=np.array(
                [np.r_[o.reference, o.brightness[0]] for o in clutter], dtype=np.float64
            ).reshape(-1, 3),
        )

    def render(self, points: np.ndarray) -> np.ndarray:
        """Background + noise + point sources, as the sensor would give them.

        Parameters
        ----------
        points : ndarray of shape (N, 3)
            (row, col, brightness) in frame pixels / grey levels.

        Returns
        -------
        ndarray of shape (H, W): uint8 grey levels when ``quantize``, else float32.
        """
        cfg = self.config
        image = self._static.copy()
        if self._scene is not None:
            image += self._scene_now()
        image += render_points(points, (cfg.height, cfg.width), cfg.psf_sigma, self._radius)
        if cfg.gain > 0:
            electrons = self._rng.poisson(np.maximum(image, 0.0) / cfg.gain)
            image = (np.float32(cfg.gain) * electrons).astype(np.float32)
        if cfg.noise_sigma > 0:
            noise = self._rng.standard_normal((cfg.height, cfg.width), dtype=np.float32)
            image += np.float32(cfg.noise_sigma) * noise
        if cfg.quantize:
            return np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return image

    def step(self) -> tuple[np.ndarray, SceneTruth]:
        """The current frame and its truth, then advance the scene by one frame.

        Returns
        -------
        image : ndarray of shape (H, W), float32 grey levels
        truth : SceneTruth
        """
        truth = self.truth()
        points = np.concatenate([truth.targets, truth.clutter]).reshape(-1, 3)
        image = self.render(points)
        self._advance()
        return image, truth

    def _advance(self) -> None:
        cfg, rng = self.config, self._rng
        self._frame += 1
        for obj in self._objects:
            obj.reference = obj.reference + obj.speed * np.array(
                [np.sin(obj.heading), np.cos(obj.heading)]
            )
            obj.heading += obj.turn
            if not obj.is_clutter and obj.shape is None:
                drift = rng.uniform(0.0, cfg.max_drift, size=len(obj.offset))
                obj.offset = np.minimum(obj.offset + drift, cfg.max_spread)
            elif obj.shape is not None and obj.bound > 0:
                obj.shape = obj.shape + obj.drift
                away = np.hypot(*obj.shape.T) > obj.bound
                obj.drift[away] = -obj.drift[away]
        for i, obj in enumerate(self._objects):
            if not (self._inside(obj.reference) and self._far_from_others(obj.reference, obj)):
                self._objects[i] = self._spawn(obj.is_clutter, replacing=obj)


def render_points(
    points: np.ndarray,
    shape: tuple[int, int],
    sigma: float = SIGMA,
    radius: int | None = None,
) -> np.ndarray:
    """Pixel-integrated Gaussian point sources, each rendered only into a local window.

    Parameters
    ----------
    points : ndarray of shape (N, 3)
        (row, col, brightness) in frame pixels (integer = pixel centre) / grey levels.
    shape : tuple of int
        (H, W) of the frame.
    sigma : float
        PSF standard deviation (px).
    radius : int, optional
        Half side of the square window around the pixel nearest each point; defaults to
        ceil(4σ) + 1, which holds all but ~1e-8 of the energy.

    Returns
    -------
    ndarray of shape (H, W), float32: Σ_k brightness_k × PSF_k, zero where nothing lands.

    Examples
    --------
    >>> img = render_points(np.array([[5.0, 2.0, 100.0]]), (11, 11))
    >>> tuple(int(i) for i in np.unravel_index(img.argmax(), img.shape))
    (5, 2)
    """
    height, width = shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.zeros(height * width, dtype=np.float64)
    if len(pts) == 0:
        return out.reshape(height, width).astype(np.float32)
    radius = int(math.ceil(4 * sigma)) + 1 if radius is None else radius
    side = 2 * radius + 1
    corner = np.rint(pts[:, :2]).astype(np.int64) - radius  # (N, 2) window top-left
    local = pts[:, :2] - corner  # position inside the window
    g_row = pixel_response(local[:, 0], side, sigma).T  # (N, side)
    g_col = pixel_response(local[:, 1], side, sigma).T
    values = pts[:, 2, None, None] * g_row[:, :, None] * g_col[:, None, :]  # (N, side, side)
    steps = np.arange(side)
    rows = np.broadcast_to((corner[:, 0, None] + steps)[:, :, None], values.shape)
    cols = np.broadcast_to((corner[:, 1, None] + steps)[:, None, :], values.shape)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    flat = rows[inside] * width + cols[inside]
    out += np.bincount(flat, weights=values[inside], minlength=height * width)
    return out.reshape(height, width).astype(np.float32)
