"""Scene simulator and simulator source: determinism, truth/rendering agreement, SeqCSIST rules."""

import dataclasses

import cv2
import numpy as np
import pytest

from sim.render import render
from stages.scene import SEQCSIST_MAX_SPREAD, SceneConfig, SceneSimulator, render_points
from stages.source import SimulatorConfig, SimulatorSource

QUIET = SceneConfig(noise_sigma=0.0, quantize=False)


def test_same_seed_same_frames_other_seed_differs():
    a, b, c = SceneSimulator(seed=5), SceneSimulator(seed=5), SceneSimulator(seed=6)
    for _ in range(3):
        (ia, ta), (ib, tb), (ic, _) = a.step(), b.step(), c.step()
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ta.targets, tb.targets)
    assert not np.array_equal(ia, ic)


def test_frame_is_8_bit_of_the_configured_size_unless_unquantised():
    image, truth = SceneSimulator(SceneConfig(height=64, width=96, groups=2), seed=0).step()
    assert image.shape == (64, 96) and image.dtype == np.uint8
    assert len(truth.group_ids) == 2
    raw, _ = SceneSimulator(SceneConfig(height=64, width=96, quantize=False), seed=0).step()
    assert raw.dtype == np.float32


def test_render_points_matches_sim_render_on_a_patch():
    targets = np.array([[5.2, 2.9, 230.0], [5.5, 3.2, 221.0]])
    expected = render(targets[None], patch=11)[0]
    got = render_points(targets, (11, 11))
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_render_points_clips_at_the_frame_edge():
    img = render_points(np.array([[0.0, 0.0, 100.0]]), (8, 8))
    assert img[0, 0] == img.max() and 0 < img.sum() < 100.0


def test_truth_positions_render_where_expected():
    scene = SceneSimulator(QUIET, seed=3)
    image, truth = scene.step()
    residual = image - QUIET.background
    for gid, ref in zip(truth.group_ids, truth.references, strict=True):
        r, c = np.rint(ref).astype(int)
        window = residual[r - 3 : r + 4, c - 3 : c + 4]
        rows, cols = np.mgrid[r - 3 : r + 4, c - 3 : c + 4]
        centroid = np.array([(window * rows).sum(), (window * cols).sum()]) / window.sum()
        targets = truth.group_targets(gid)
        expected = (targets[:, :2] * targets[:, 2:]).sum(0) / targets[:, 2].sum()
        np.testing.assert_allclose(centroid, expected, atol=0.02)
        # the group carries (almost) its whole brightness: nothing is rendered elsewhere
        assert window.sum() == pytest.approx(targets[:, 2].sum(), rel=1e-3)
    assert residual.sum() == pytest.approx(truth.targets[:, 2].sum(), rel=1e-3)


def test_groups_follow_the_seqcsist_rules_over_time():
    cfg = SceneConfig(groups=6)
    scene = SceneSimulator(cfg, seed=11)
    previous = None
    for _ in range(120):
        _, truth = scene.step()
        assert len(truth.group_ids) == cfg.groups
        refs = truth.references
        gaps = np.linalg.norm(refs[:, None] - refs[None], axis=-1) + np.eye(len(refs)) * 1e9
        assert gaps.min() > cfg.min_separation
        assert np.all(refs >= cfg.border) and np.all(refs <= cfg.height - 1 - cfg.border)
        for gid, ref in zip(truth.group_ids, refs, strict=True):
            targets = truth.group_targets(gid)
            assert 2 <= len(targets) <= 4
            offsets = np.linalg.norm(targets[:, :2] - ref, axis=1)
            assert np.all(offsets >= cfg.spacing - 1e-12)
            assert np.all(offsets <= SEQCSIST_MAX_SPREAD + 1e-12)
            assert np.all((targets[:, 2] >= 220) & (targets[:, 2] <= 250))
            if previous is not None and gid in previous:
                step = np.linalg.norm(ref - previous[gid])
                assert cfg.speed[0] - 1e-9 <= step <= cfg.speed[1] + 1e-9
        previous = dict(zip(truth.group_ids, refs, strict=True))


def test_groups_that_leave_are_respawned_with_a_new_id():
    cfg = SceneConfig(height=48, width=48, groups=1, border=6, speed=(2.0, 2.0), min_separation=5)
    scene = SceneSimulator(cfg, seed=0)
    ids = {int(scene.step()[1].group_ids[0]) for _ in range(60)}
    assert len(ids) > 2


def test_clutter_and_gradient():
    cfg = SceneConfig(groups=1, clutter=3, gradient=30.0, noise_sigma=0.0, quantize=False)
    image, truth = SceneSimulator(cfg, seed=2).step()
    assert truth.clutter.shape == (3, 3)
    for r, c, _ in truth.clutter:
        assert image[int(round(r)), int(round(c))] > image.min() + 20
    corners = image[[2, 2, -3, -3], [2, -3, 2, -3]]
    assert np.ptp(corners) > 10


def test_a_scene_from_a_folder_covers_the_frame_and_pans(tmp_path):
    texture = np.random.default_rng(0).integers(0, 65536, size=(50, 100)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "texture.png"), texture)  # smaller than the frame: stretched
    cfg = SceneConfig(height=64, width=64, groups=0, noise_sigma=0.0, quantize=False,
                      background=0.0, scene=str(tmp_path), scene_amplitude=40.0)
    first, _ = SceneSimulator(cfg, seed=3).step()
    assert first.shape == (64, 64) and np.ptp(first) > 20
    assert 0 <= first.min() and first.max() <= 40.0
    panning = SceneSimulator(dataclasses.replace(cfg, scene_drift=2.0), seed=3)
    a, _ = panning.step()
    b, _ = panning.step()
    np.testing.assert_allclose(a, first, atol=1e-4)  # frame 0 is the unpanned crop
    assert np.abs(b - a).mean() > 1.0  # frame 1 has moved by 2 px


def test_builtin_scenes_texture_the_background_and_leave_the_truth_exact():
    cfg = SceneConfig(groups=3, noise_sigma=0.0, quantize=False, scene="builtin",
                      scene_amplitude=40.0)
    sim = SceneSimulator(cfg, seed=4)
    image, truth = sim.step()
    flat = SceneSimulator(dataclasses.replace(cfg, scene=None), seed=4)
    assert np.std(image) > np.std(flat.step()[0])  # texture
    targets = render_points(truth.targets, image.shape, cfg.psf_sigma, 4)
    background = image - targets  # what is left is the scene on the background level
    assert background.min() >= cfg.background - 1e-3
    assert background.max() <= cfg.background + cfg.scene_amplitude + 1e-3
    with pytest.raises(ValueError, match="scene_amplitude"):
        SceneConfig(scene_amplitude=-1.0)

def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="max_targets"):
        SceneConfig(max_targets=5)
    with pytest.raises(ValueError, match="cannot place"):
        SceneSimulator(SceneConfig(height=40, width=40, border=5, groups=30), seed=0)


def test_source_emits_frames_with_truth_and_restarts_from_the_seed():
    source = SimulatorSource(SimulatorConfig(frames=4, seed=9, groups=3, fps=50.0))
    first, second = list(source), list(source)
    assert [f.seq for f in first] == [0, 1, 2, 3]
    assert [f.t_source_ns for f in first] == [0, 20_000_000, 40_000_000, 60_000_000]
    np.testing.assert_array_equal(first[3].image, second[3].image)
    assert len({p.group for p in first[0].truth}) == 3
    assert all(220 <= p.brightness <= 250 for p in first[0].truth)


def test_source_streams_forever_when_frames_is_zero():
    stream = iter(SimulatorSource(SimulatorConfig(frames=0, height=32, width=32, groups=1,
                                                  border=8)))
    assert [next(stream).seq for _ in range(30)] == list(range(30))
