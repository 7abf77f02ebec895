"""Built-in IR-like background scenes, for the hybrid-background set of paper Table IV when no
real infrared frames are at hand (``python -m sim generate --backgrounds builtin``).

The paper composites its trajectories onto real IR scenes (mountains, forests, buildings,
sky). Nothing real can be downloaded here, so the scenes are made from two sources:

- **photographs** shipped with scikit-image (a street with sky and buildings, a rocket on
  its pad, the lunar surface, a brick wall, grass, gravel, the Hubble deep field), made
  IR-like: greyscale, optics blur (Gaussian σ = 1.5 px) and 2× downsampling (thermal sensors
  resolve less than visible cameras), random polarity (white-hot or black-hot);
- **synthetic scenes** (:data:`SYNTHETIC_KINDS`): ``fractal`` 1/f^β clutter (terrain, β ∈
  [1.6, 3.0]), ``clouds`` (a thresholded fractal: cloud banks with sharp edges on a sky
  gradient, textured inside), ``horizon`` (a sky gradient over warmer, textured ground,
  separated by a ragged 1-D fractal horizon line) and ``buildings`` (a skyline of rectangles at
  different temperatures with rows of windows, on a sky gradient), each blurred by the optics
  (σ = 0.7 px).

Every scene then gets the sensor's defects (:func:`sensor_effects`): fixed-pattern noise
(a static per-pixel offset), column striping (a static per-column offset), mild vignetting,
and rare dead and hot pixels. Scenes are float images in 0…1 (a scene's own minimum and
maximum), which :func:`sim.backgrounds.random_crops` scales to grey levels (default 64): the
same path as a folder of real frames, so ``--backgrounds DIR`` and ``--backgrounds builtin``
give datasets of the same form.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

#: Synthetic scene kinds, in the order :func:`builtin_scenes` makes them.
SYNTHETIC_KINDS = ("fractal", "clouds", "horizon", "buildings")
#: scikit-image sample images used as photographs (all ship with the package).
PHOTOS = ("camera", "rocket", "moon", "brick", "grass", "gravel", "hubble_deep_field")
SCENE_SIZE = 256
#: Sensor defects (in units of the scene's 0…1 range; × 64 grey levels by default).
FPN_STD = 0.008
STRIPE_STD = 0.012
VIGNETTE = 0.05
DEFECT_RATE = 1e-4


def unit(image: np.ndarray) -> np.ndarray:
    """``image`` rescaled to 0…1 by its own minimum and maximum (a flat image gives 0)."""
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image, dtype=np.float64)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian optics blur of ``sigma`` px (reflecting borders)."""
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def fractal(shape: tuple[int, ...], beta: float, rng: np.random.Generator) -> np.ndarray:
    """1/f^β noise (power spectrum ∝ f^−β) of ``shape`` (1-D or 2-D), in 0…1.

    β ≈ 2 looks like natural terrain and clouds; larger β is smoother.
    """
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij")
    f = np.sqrt(sum(g * g for g in grids))
    f.flat[0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** (beta / 2)
    spectrum.flat[0] = 0.0
    return unit(np.fft.irfftn(spectrum, s=shape, axes=tuple(range(len(shape)))))


def _sky(n: int, rng: np.random.Generator) -> np.ndarray:
    """A vertical sky gradient (n × n), colder (darker) upwards, in 0…1."""
    top, bottom = sorted(rng.uniform(0.0, 0.6, size=2))
    return np.repeat(np.linspace(top, bottom, n)[:, None], n, axis=1)


def clouds(n: int, rng: np.random.Generator) -> np.ndarray:
    """Cloud banks with sharp edges on a sky gradient (n × n, 0…1)."""
    field = fractal((n, n), rng.uniform(2.2, 2.8), rng)
    cover = np.quantile(field, rng.uniform(0.3, 0.7))  # the clear-sky fraction
    mask = 1.0 / (1.0 + np.exp(-(field - cover) / rng.uniform(0.01, 0.06)))
    texture = fractal((n, n), rng.uniform(1.8, 2.4), rng)
    level = rng.uniform(0.4, 1.0)  # warm or cold clouds against the sky
    return unit(_sky(n, rng) * (1 - mask) + mask * (level * 0.7 + 0.3 * texture))


def horizon(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sky over warmer textured ground, split by a ragged horizon line (n × n, 0…1)."""
    line = n * rng.uniform(0.25, 0.75) + (fractal((n,), 2.0, rng) - 0.5) * rng.uniform(10, 60)
    ground = rng.uniform(0.5, 0.9) + 0.4 * (fractal((n, n), rng.uniform(1.5, 2.2), rng) - 0.5)
    rows = np.arange(n)[:, None]
    return unit(np.where(rows >= line[None, :], ground, _sky(n, rng)))


def buildings(n: int, rng: np.random.Generator) -> np.ndarray:
    """A skyline of buildings at different temperatures with rows of windows, on a sky
    gradient (n × n, 0…1)."""
    image = _sky(n, rng)
    col = 0
    while col < n:
        width = int(rng.integers(12, 60))
        height = int(rng.integers(n // 8, n * 3 // 4))
        top = n - height
        wall = rng.uniform(0.5, 0.9)
        image[top:, col:col + width] = wall
        if rng.random() < 0.7:  # windows: a grid of small, warmer or colder rectangles
            step_r, step_c = int(rng.integers(6, 12)), int(rng.integers(5, 10))
            shade = wall + rng.choice([-1, 1]) * rng.uniform(0.05, 0.25)
            for r in range(top + 3, n - 3, step_r):
                for c in range(col + 2, min(col + width, n) - 3, step_c):
                    image[r:r + 3, c:c + 2] = shade
        col += width + int(rng.integers(0, 20))
    return unit(image)


def fractal_scene(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f^β terrain clutter (n × n, 0…1)."""
    return fractal((n, n), rng.uniform(1.6, 3.0), rng)


_MAKERS = {"fractal": fractal_scene, "clouds": clouds, "horizon": horizon,
           "buildings": buildings}


def synthetic_scene(kind: str, rng: np.random.Generator, n: int = SCENE_SIZE) -> np.ndarray:
    """One synthetic scene of ``kind`` (:data:`SYNTHETIC_KINDS`), optics-blurred, n × n, 0…1."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {SYNTHETIC_KINDS}")
    return unit(blur(_MAKERS[kind](n, rng), 0.7))


def photo_scene(name: str, rng: np.random.Generator) -> np.ndarray:
    """A scikit-image sample photograph made IR-like (see the module docstring), 0…1."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    if image.ndim == 3:  # RGB(A) -> luminance
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    image = blur(unit(image), 1.5)
    image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2),
                       interpolation=cv2.INTER_AREA)
    return 1.0 - image if rng.random() < 0.5 else image


def sensor_effects(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The scene as a sensor sees it: vignetting, fixed-pattern noise, column striping, and
    dead (0) and hot (1) pixels at :data:`DEFECT_RATE`; clipped to 0…1."""
    h, w = scene.shape
    rr, cc = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = scene * (1 - VIGNETTE * (rr ** 2 + cc ** 2) / 2)
    out = out + FPN_STD * rng.standard_normal((h, w)) + STRIPE_STD * rng.standard_normal((1, w))
    defects = rng.random((h, w)) < DEFECT_RATE
    out[defects] = rng.integers(0, 2, size=int(defects.sum()))
    return np.clip(out, 0.0, 1.0)


def builtin_scenes(rng: np.random.Generator, per_kind: int = 8) -> list[np.ndarray]:
    """Every photograph of :data:`PHOTOS` and ``per_kind`` scenes of each synthetic kind,
    with sensor effects: a list of float images in 0…1."""
    scenes = [photo_scene(name, rng) for name in PHOTOS]
    scenes += [synthetic_scene(kind, rng) for kind in SYNTHETIC_KINDS for _ in range(per_kind)]
    return [sensor_effects(s, rng) for s in scenes]


def scene_names(per_kind: int = 8) -> list[str]:
    """Names of the scenes of :func:`builtin_scenes`, in its order."""
    return list(PHOTOS) + [f"{kind}-{i}" for kind in SYNTHETIC_KINDS for i in range(per_kind)]


def write_scenes(folder: str | Path, rng: np.random.Generator, per_kind: int = 8) -> list[Path]:
    """Write :func:`builtin_scenes` as 16-bit PNGs named after :func:`scene_names`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, scene in zip(scene_names(per_kind), builtin_scenes(rng, per_kind), strict=True):
        path = folder / f"{name}.png"
        if not cv2.imwrite(str(path), np.round(scene * 65535).astype(np.uint16)):
            raise OSError(f"{path}: could not write the image")
        paths.append(path)
    return paths
