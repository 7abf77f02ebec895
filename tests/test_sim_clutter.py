"""The built-in IR-like background scenes (sim.clutter) and ``--backgrounds builtin``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sim.__main__ import main
from sim.background_level import ring_levels
from sim.backgrounds import load_backgrounds
from sim.clutter import (
    PHOTOS,
    SYNTHETIC_KINDS,
    builtin_scenes,
    fractal,
    scene_names,
    sensor_effects,
    synthetic_scene,
)
from sim.dataset import SeqDataset, simulate


def _slope(image):
    """Log-log slope of the radially averaged power spectrum (−β for 1/f^β noise)."""
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]),
                              indexing="ij"))
    band = (f > 0.02) & (f < 0.3)
    return np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]


@pytest.mark.parametrize("beta", [1.6, 2.5])
def test_fractal_has_the_asked_power_law(beta):
    image = fractal((256, 256), beta, np.random.default_rng(0))
    assert image.min() == 0 and image.max() == 1
    assert _slope(image) == pytest.approx(-beta, abs=0.15)


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_synthetic_scenes_are_textured_unit_images(kind):
    scene = synthetic_scene(kind, np.random.default_rng(1))
    assert scene.shape == (256, 256) and scene.min() == 0 and scene.max() == 1
    assert scene.std() > 0.05  # not flat
    again = synthetic_scene(kind, np.random.default_rng(1))
    np.testing.assert_array_equal(scene, again)  # seeded


def test_horizon_and_buildings_are_colder_above():
    rng = np.random.default_rng(2)
    for kind in ("horizon", "buildings"):
        scene = synthetic_scene(kind, rng)
        assert scene[:20].mean() < scene[-20:].mean()  # sky on top, warm ground/walls below


def test_sensor_effects_add_stripes_and_defects():
    rng = np.random.default_rng(3)
    flat = np.full((256, 256), 0.5)
    seen = sensor_effects(flat, rng)
    columns = seen[100:156].mean(axis=0)  # the column offsets survive averaging down a column
    assert 0.005 < columns.std() < 0.03
    assert 0 <= seen.min() and seen.max() <= 1
    many = sensor_effects(np.full((2000, 2000), 0.5), rng)
    hot_or_dead = np.isin(many, (0.0, 1.0)).mean()
    assert 0.3e-4 < hot_or_dead < 3e-4


def test_builtin_scenes_cover_photos_and_every_kind():
    scenes = builtin_scenes(np.random.default_rng(0), per_kind=2)
    assert len(scenes) == len(PHOTOS) + 2 * len(SYNTHETIC_KINDS) == len(scene_names(2))
    assert all(s.ndim == 2 and min(s.shape) >= 128 and 0 <= s.min() and s.max() <= 1
               for s in scenes)


def test_builtin_backgrounds_give_textured_patches_in_grey_levels():
    crops = load_backgrounds("builtin", 200, np.random.default_rng(4), amplitude=64.0)
    assert crops.shape == (200, 11, 11)
    assert 0 <= crops.min() and crops.max() <= 64
    spread = crops.max(axis=(1, 2)) - crops.min(axis=(1, 2))
    assert np.median(spread) > 2  # most patches carry structure, not a flat level


def test_backgrounds_command_writes_16_bit_pngs(tmp_path, capsys):
    assert main(["backgrounds", "--out", str(tmp_path), "--seed", "5"]) == 0
    files = sorted(tmp_path.glob("*.png"))
    assert len(files) == len(scene_names())
    image = cv2.imread(str(files[0]), cv2.IMREAD_ANYDEPTH)
    assert image.dtype == np.uint16 and image.max() > 60000
    # the folder is a valid --backgrounds DIR
    assert load_backgrounds(tmp_path, 3, np.random.default_rng(0)).shape == (3, 11, 11)


def test_background_subtracted_removes_each_trajectorys_ring_level():
    plain = simulate(4, seed=5)
    lift = np.random.default_rng(3).integers(1, 40, size=4).repeat(20)[:, None, None]
    lifted = SeqDataset(plain.images + lift.astype(np.float32), plain.targets)
    out = lifted.background_subtracted()
    assert out.images.dtype == np.float32 and out.images.shape == plain.images.shape
    np.testing.assert_array_equal(out.images, plain.images)  # the lift is the ring level
    np.testing.assert_array_equal(ring_levels(out.trajectory_images()), 0)
    np.testing.assert_array_equal(out.targets, plain.targets)
    # the extractor is told where the subtracted frames clip
    np.testing.assert_array_equal(plain.trajectory_saturation(), 255)
    np.testing.assert_array_equal(out.trajectory_saturation(), 255 - lift[::20, 0, 0])
    np.testing.assert_array_equal(out.subset([2, 0]).trajectory_saturation(),
                                  255 - lift[[40, 0], 0, 0])


def test_offline_points_leave_out_pixels_clipped_before_the_background_was_subtracted():
    """A bright group on a 60-grey background clips at 255; after the level is subtracted
    the clipped pixels sit at 195, and scored as if they were not clipped the fit's
    brightness and positions go wrong. The harness passes each window's level."""
    from models.harness import predict_maps, score_predictions
    from models.registry import get_model
    from sim.render import render_uint8

    plain = simulate(6, seed=4)
    clipped = render_uint8(plain.targets, background=np.full((11, 11), 60.0))
    data = SeqDataset(clipped, plain.targets).background_subtracted()
    assert (data.images >= 195).any() and np.all(data.trajectory_saturation() == 195)
    oracle = get_model("ista").eval()  # no weights: Φ-based, the same on any machine
    pred = predict_maps(oracle, data)
    assert np.all(pred.saturation == 195)
    censored = score_predictions(pred, data, "points")["mAP"]
    pred_255 = type(pred)(pred.maps, pred.windows, pred.frames, pred.forward_s,
                          np.full_like(pred.saturation, 255.0))
    assert censored > score_predictions(pred_255, data, "points")["mAP"] + 0.05
