"""The learned scene background (stages/scene_background.py) and the cropper's use of it:
texture under a spot removed, noise not added, clipped pixels still recognised."""

from __future__ import annotations

import numpy as np
import pytest

from stages.cropper import Cropper, CropperConfig, WindowCropper
from stages.messages import Blob, Blobs, Frame
from stages.scene import render_points
from stages.scene_background import SceneBackground

SHAPE = (48, 64)


def textured_scene(seed: int = 0) -> np.ndarray:
    """A static scene with an edge and a blob of texture (grey levels 20 … 70)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float32)
    scene = 20 + 30 * (cols > 30) + 10 * np.sin(rows / 3.0) * np.cos(cols / 5.0)
    return (scene + rng.normal(0, 2, SHAPE)).astype(np.float32)  # fixed-pattern part


def moving_target_frames(n: int, scene: np.ndarray, noise: float, seed: int = 1,
                         peak_brightness: float = 300.0):
    """Frames of ``scene`` + one target moving 0.25 px/frame along a row, + white noise;
    yields (image, centroid)."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        centre = np.array([24.0, 20.0 + 0.25 * k])
        target = render_points(np.array([[*centre, peak_brightness]]), SHAPE)
        yield scene + target + rng.normal(0, noise, SHAPE).astype(np.float32), centre


def test_the_learned_background_is_the_static_scene_even_under_a_moving_target():
    scene = textured_scene()
    model = SceneBackground()
    for image, centre in moving_target_frames(100, scene, noise=1.0):
        model.update(image, centre[None])
    error = model.estimate() - scene
    # where the target started (covered for the first ~12 frames, then uncovered): learned
    assert np.abs(error[22:27, 18:23]).max() < 1.0
    # everywhere: the sensor noise is averaged (and shrunk) down, the texture kept
    assert np.sqrt(np.mean(error ** 2)) < 0.35


def test_a_hole_in_a_flat_noisy_scene_is_filled_with_its_level():
    model = SceneBackground(mask_px=3)
    rng = np.random.default_rng(2)
    for _ in range(4):  # the border pixels' means still hold noise of sigma / 2 = 1
        model.update(20 + rng.normal(0, 2, SHAPE).astype(np.float32), np.array([[24.0, 30.0]]))
    hole = model.estimate()[22:27, 28:33] - 20
    assert np.sqrt(np.mean(hole ** 2)) < 0.6  # a smooth fill, not a copy of a noisy pixel


def test_pixels_never_seen_free_are_filled_from_around_them():
    model = SceneBackground(mask_px=3)
    flat = np.full(SHAPE, 42.0, np.float32)
    for _ in range(5):
        model.update(flat, np.array([[20.0, 30.0]]))  # a blob that never moves
    estimate = model.estimate()
    assert estimate[20, 30] == pytest.approx(42.0, abs=1e-3)
    assert np.allclose(estimate, 42.0, atol=1e-3)
    assert SceneBackground().estimate() is None
    with pytest.raises(ValueError, match="alpha"):
        SceneBackground(alpha=0.0)


def _window_residual(config: CropperConfig, scene: np.ndarray) -> float:
    """RMS of (patch − the target alone) over the middle frames of the last windows."""
    core = WindowCropper(config)
    residuals = []
    for k, (image, centre) in enumerate(moving_target_frames(80, scene, noise=0.5)):
        for w in core.update(k, image, centre[None]):
            middle = w.seq
            target = render_points(np.array([[24.0 - w.origin[0], 20.0 + 0.25 * middle
                                              - w.origin[1], 300.0]]), (11, 11))
            if middle >= 60:
                residuals.append(w.patches[2] - target)
    return float(np.sqrt(np.mean(np.square(residuals))))


def test_the_cropper_removes_the_texture_the_ring_median_leaves():
    scene = textured_scene()
    ring = _window_residual(CropperConfig(), scene)
    learned = _window_residual(CropperConfig(scene_background=True), scene)
    assert learned < 1.0 < 4.0 < ring  # noise 0.5 against the scene's texture


def test_with_a_learned_background_clipped_pixels_stay_recognised():
    """8-bit frames: a target clips at 255 on a textured scene; the window's background is
    the scene's level at its clipped pixels, so saturation − background lies at or below
    every clipped pixel of the patch (the extractor censors them)."""
    scene = textured_scene()
    cropper = Cropper(CropperConfig(scene_background=True))
    out = []
    frames = moving_target_frames(40, scene, noise=0.5, peak_brightness=900.0)
    for k, (image, centre) in enumerate(frames):
        raw = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        blobs = (Blob(row=centre[0], col=centre[1], peak=200.0, area=9, snr=50.0),)
        out += cropper.process(Frame(seq=k, t_source_ns=k, image=raw))
        out += cropper.process(Blobs(seq=k, t_source_ns=k, blobs=blobs))
    checked = 0
    for msg in out:
        for info, patches in zip(msg.windows, msg.patches, strict=True):
            clip_level = info.saturation - info.background
            raw = patches + (patches.max() > 0)  # any patch: compare its clipped pixels
            clipped = patches >= clip_level - 1e-3
            assert clipped.any()  # the peak clipped and is still seen as clipped
            assert info.saturation == 255.0
            checked += 1
            del raw
    assert checked > 20
