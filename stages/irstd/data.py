"""Input normalisation of the learned detectors and their simulated training/validation frames.

NumPy only (no torch): :func:`normalise` runs in the live chain before the network.

**Normalisation** (:func:`normalise`), per frame, from the frame alone (no dataset mean, so
real frames of another sensor work the same): ``z = (I − median(I)) / σ`` with σ the frame's
noise, estimated robustly from horizontally adjacent pixel differences
(1.4826 · MAD(ΔI) / √2, which a smooth scene or a few targets barely move), then
``x = asinh(z / 4)``: linear within ±4 σ of the background, logarithmic beyond, so that a
255-grey target (z ≈ 235, x ≈ 4.8) and an 80-grey scene (|z| ≲ 80, x ≲ 3.7) both stay in a
range the network's few channels handle.

**Frames** (:func:`make_frames`): full 256² frames of :class:`stages.scene.SceneSimulator`,
each from its own simulator (own seed, own scene), truth mask
:func:`stages.detection_metrics.truth_mask` (signal ≥ 25 % of the group's peak). The mix
(:func:`scene_config`): 30 % flat scenes (noise σ U(0.5, 3), a background ramp of U(0, 40)
grey levels on half of them), 70 % the built-in cluttered scenes (amplitude U(15, 90), noise
σ U(0.7, 2)); 4–10 CSO groups. The sub-target brightness stays the simulator's (U[220, 250]),
so the SNR range is the one the simulator produces over those noise levels. Training seeds
start at :data:`TRAIN_SEED` (10 000), validation at :data:`VAL_SEED` (900 000); the scoring of
``stages.detector_eval`` and ``stages.irstd.table`` uses seeds 11 … 30, none of which the
trainer sees.
"""

from __future__ import annotations

import numpy as np

from stages.detection_metrics import truth_mask
from stages.scene import SceneConfig, SceneSimulator, SceneTruth

TRAIN_SEED = 10_000
VAL_SEED = 900_000
MAD_TO_STD = 1.4826
#: z-scores are compressed as asinh(z / ASINH_SCALE).
ASINH_SCALE = 4.0


def noise_sigma(image: np.ndarray) -> float:
    """Robust noise σ of a frame (grey levels): 1.4826 · MAD of the horizontal differences of
    every fourth row, / √2; the differences' standard deviation where the MAD is 0 (flat,
    quantised frames); at least 1e-3."""
    d = np.diff(np.asarray(image, dtype=np.float32)[::4], axis=1).ravel()
    med = np.median(d)
    sigma = MAD_TO_STD * float(np.median(np.abs(d - med))) / np.sqrt(2.0)
    if sigma <= 0:
        sigma = float(d.std()) / np.sqrt(2.0)
    return max(sigma, 1e-3)


def normalise(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Network input of one frame: asinh((I − median) / σ / 4) (H, W) float32, and σ (grey
    levels, :func:`noise_sigma`)."""
    img = np.asarray(image, dtype=np.float32)
    sigma = noise_sigma(img)
    centre = np.float32(np.median(img[::2, ::2]))
    z = img - centre
    z *= np.float32(1.0 / (sigma * ASINH_SCALE))
    return np.arcsinh(z, out=z), sigma


def scene_config(rng: np.random.Generator, size: int = 256) -> SceneConfig:
    """One random scene of the training mix (see the module doc)."""
    groups = int(rng.integers(4, 11))
    if rng.random() < 0.3:
        return SceneConfig(height=size, width=size, groups=groups,
                           noise_sigma=float(rng.uniform(0.5, 3.0)),
                           gradient=float(rng.uniform(0, 40)) if rng.random() < 0.5 else 0.0)
    return SceneConfig(height=size, width=size, groups=groups, scene="builtin",
                       scene_amplitude=float(rng.uniform(15, 90)),
                       noise_sigma=float(rng.uniform(0.7, 2.0)))


def make_frames(scenes: int, seed: int, frames_per_scene: int = 2, gap: int = 40,
                size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Normalised frames and truth masks of ``scenes`` random scenes of the mix.

    Scene ``i`` is drawn and simulated with seed ``seed + i``; of each, ``frames_per_scene``
    frames ``gap`` steps apart are kept.

    Returns
    -------
    images : ndarray of shape (N, size, size), float32
        :func:`normalise`\\ d frames, N = scenes · frames_per_scene.
    masks : ndarray of shape (N, size, size), uint8
        Truth masks (1 = target pixel).
    """
    images, masks = [], []
    for i in range(scenes):
        rng = np.random.default_rng(seed + i)
        config = scene_config(rng, size)
        sim = SceneSimulator(config, seed=seed + i)
        for k in range(frames_per_scene):
            for _ in range(gap if k else 1):
                image, truth = sim.step()
            images.append(normalise(image)[0])
            masks.append(truth_mask(truth, image.shape, config.psf_sigma).astype(np.uint8))
    return np.stack(images), np.stack(masks)


#: Validation sets: (name, scene keyword arguments).
VAL_SETS = (("flat", {}), ("amp40", {"scene": "builtin", "scene_amplitude": 40.0}),
            ("amp80", {"scene": "builtin", "scene_amplitude": 80.0}))


def validation_frames(frames: int = 20, scenes: int = 10, seed: int = VAL_SEED
                      ) -> dict[str, list[tuple[np.ndarray, SceneTruth, float]]]:
    """Held-out raw frames for model selection: for each of :data:`VAL_SETS`, ``frames``
    frames from ``scenes`` simulators (seeds ``seed`` …), as (image, truth, psf σ)."""
    out = {}
    per = -(-frames // scenes)
    for name, kwargs in VAL_SETS:
        config = SceneConfig(**kwargs)
        items = []
        for s in range(scenes):
            sim = SceneSimulator(config, seed=seed + s)
            for _ in range(per):
                for _ in range(10):
                    image, truth = sim.step()
                items.append((image, truth, config.psf_sigma))
        out[name] = items[:frames]
    return out


def sample_crops(images: np.ndarray, masks: np.ndarray, batch: int, crop: int,
                 rng: np.random.Generator, target_fraction: float = 0.6
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A training batch of random ``crop``² crops (B, 1, crop, crop) float32 and their masks
    (B, 1, crop, crop) float32: a ``target_fraction`` of them centred (± crop / 3) on a
    random target pixel, the rest anywhere; random flips and transposition."""
    n, h, w = images.shape
    xs = np.empty((batch, 1, crop, crop), np.float32)
    ys = np.empty((batch, 1, crop, crop), np.float32)
    for b in range(batch):
        i = int(rng.integers(n))
        if rng.random() < target_fraction:
            rows, cols = np.nonzero(masks[i])
            k = int(rng.integers(len(rows))) if len(rows) else 0
            r = (rows[k] if len(rows) else h // 2) - crop // 2 + int(rng.integers(-crop // 3,
                                                                                  crop // 3 + 1))
            c = (cols[k] if len(rows) else w // 2) - crop // 2 + int(rng.integers(-crop // 3,
                                                                                  crop // 3 + 1))
        else:
            r, c = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        r, c = int(np.clip(r, 0, h - crop)), int(np.clip(c, 0, w - crop))
        x, y = images[i, r:r + crop, c:c + crop], masks[i, r:r + crop, c:c + crop]
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x.T, y.T
        xs[b, 0], ys[b, 0] = x, y
    return xs, ys
