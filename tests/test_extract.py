"""Sub-pixel extractor: counts, splat fit and physics fit on synthetic maps and frames."""

import json

import numpy as np
import pytest

from models.config import ConfigError
from models.extract import (
    ExtractorConfig,
    estimate_counts,
    estimate_noise,
    estimate_texture,
    extract_points,
)
from models.layouts import learn_layouts
from models.protocol import eval_windows
from sim.dataset import simulate
from sim.render import render_uint8, splat_map
from sim.trajectory import TrajectoryRules


def group(rng, k, centre=(5.0, 5.0)):
    """K targets 0.3 px from a reference point in distinct axis directions."""
    dirs = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=float)[rng.permutation(4)[:k]]
    ref = np.asarray(centre) + rng.uniform(-0.5, 0.5, size=2)
    t = np.empty((k, 3))
    t[:, :2] = ref + 0.3 * dirs
    t[:, 2] = rng.uniform(220, 250, size=k)
    return t


def static_noisy_groups(seed: int, k: int, count: int, sigma: float):
    """``count`` still K-target groups: truths, 5-frame uint8 windows with noise ``sigma``
    (as float32) and their splat maps blurred like an imperfect network output."""
    rng = np.random.default_rng(seed)
    truths = [group(rng, k) for _ in range(count)]
    wins = np.stack([render_uint8(np.repeat(t[None], 5, axis=0), sigma, rng=rng)
                     for t in truths]).astype(np.float32)
    maps = np.stack([splat_map(t[None])[0] for t in truths])
    maps = 0.5 * maps + 0.125 * sum(np.roll(maps, s, axis=a) for s in (1, -1) for a in (1, 2))
    return truths, wins, maps


def nearest_errors(points, truth):
    d = np.linalg.norm(points[:, None, :2] - truth[None, :, :2], axis=-1)
    return d.min(axis=0)  # per truth target


def test_counts_from_mass():
    rng = np.random.default_rng(0)
    truths = [group(rng, k) for k in (2, 3, 4, 3)]
    maps = np.stack([splat_map(t[None])[0] for t in truths])
    assert estimate_counts(maps, ExtractorConfig()).tolist() == [2, 3, 4, 3]
    assert estimate_counts(np.zeros((1, 33, 33)), ExtractorConfig()).tolist() == [0]


def test_single_target_subcell_accuracy_on_splat_maps():
    rng = np.random.default_rng(1)
    truth = np.array([[[rng.uniform(2, 8), rng.uniform(2, 8), 235.0]] for _ in range(20)])
    pts = extract_points(splat_map(truth), cfg=ExtractorConfig(refine="splat"))
    err = np.array([nearest_errors(p, t)[0] for p, t in zip(pts, truth, strict=True)])
    assert all(len(p) == 1 for p in pts)
    assert err.max() < 0.01  # far below the 1/3-px grid


@pytest.mark.parametrize("k", [2, 3])
def test_splat_fit_resolves_close_pairs(k):
    rng = np.random.default_rng(k)
    truths = [group(rng, k) for _ in range(30)]
    maps = np.stack([splat_map(t[None])[0] for t in truths])
    pts = extract_points(maps, cfg=ExtractorConfig(refine="splat"))
    errs = np.concatenate([nearest_errors(p, t) for p, t in zip(pts, truths, strict=True)])
    assert np.median(errs) < 0.05  # grid-level answers would sit near 0.1 px


def test_physics_fit_improves_on_a_blurred_map():
    """A map blurred like an imperfect network output: the 5-frame fit restores accuracy."""
    rng = np.random.default_rng(7)
    truths, wins, maps = [], [], []
    for _ in range(30):
        t = group(rng, 2)
        v = rng.uniform(-0.04, 0.04, size=2)
        frames = np.stack([t + np.r_[v * dt, 0] for dt in range(-2, 3)])
        wins.append(render_uint8(frames).astype(np.float32))
        m = splat_map(t[None])[0]
        m = 0.5 * m + 0.125 * (np.roll(m, 1, 0) + np.roll(m, -1, 0) + np.roll(m, 1, 1)
                               + np.roll(m, -1, 1))
        maps.append(m)
        truths.append(t)
    wins, maps = np.stack(wins), np.stack(maps)
    err = {}
    for refine in ("splat", "physics"):
        pts = extract_points(maps, wins, ExtractorConfig(refine=refine))
        err[refine] = np.median(np.concatenate(
            [nearest_errors(p, t) for p, t in zip(pts, truths, strict=True)]))
    assert err["physics"] < 0.04, err
    assert err["physics"] < err["splat"], err


def test_physics_needs_frames():
    with pytest.raises(ValueError, match="windows"):
        extract_points(np.zeros((1, 33, 33)) + 1, cfg=ExtractorConfig(refine="physics"))


@pytest.mark.parametrize("sigma", [0.0, 2.0, 4.0])
def test_noise_is_estimated_from_the_pixels_away_from_the_group(sigma):
    """uint8 windows with a 4-target group at the centre and a background of 20: the
    estimate is the noise std (within 10 %), and the floor on clean data."""
    rng = np.random.default_rng(int(sigma))
    wins = np.stack([render_uint8(np.repeat(group(rng, 4)[None], 5, axis=0), sigma,
                                  background=20.0, rng=rng) for _ in range(40)])
    est = estimate_noise(wins.astype(np.float32), floor=0.29)
    if sigma == 0:
        assert np.all(est == 0.29)
    else:
        assert abs(np.median(est) / sigma - 1) < 0.1, np.median(est)
        assert np.quantile(np.abs(est / sigma - 1), 0.9) < 0.25  # per window: ±10 % typical


def test_an_estimated_noise_level_weighs_the_physics_fit_like_the_true_one():
    """σ = 3 and a blurred map: the fit with the estimated σ is as accurate as with the true
    σ told."""
    truths, wins, maps = static_noisy_groups(seed=5, k=2, count=60, sigma=3.0)
    err = {}
    for name, noise in (("auto", None), ("told", 3.0)):
        pts = extract_points(maps, wins, ExtractorConfig(noise_grey=noise))
        err[name] = np.median(np.concatenate(
            [nearest_errors(p, t) for p, t in zip(pts, truths, strict=True)]))
    assert abs(err["auto"] - err["told"]) <= 0.1 * err["told"], err
    with pytest.raises(ValueError, match="noise_grey"):
        extract_points(maps, wins, ExtractorConfig(noise_grey=0.0))
    with pytest.raises(ValueError, match="physics_brightness_std must be > 0"):
        extract_points(maps, wins, ExtractorConfig(physics_brightness_std=0.0))


def test_the_brightness_prior_steadies_the_physics_fit_under_noise():
    """σ = 2, 3-target groups, blurred maps: the physics fit with the brightness prior places
    the targets closer than the same fit with a free brightness (σ = 2 test split: 84 → 89)."""
    truths, wins, maps = static_noisy_groups(seed=9, k=3, count=80, sigma=2.0)
    err = {}
    for name, std in (("prior", ExtractorConfig().physics_brightness_std), ("free", 1e9)):
        pts = extract_points(maps, wins, ExtractorConfig(physics_brightness_std=std))
        err[name] = np.mean(np.concatenate(
            [nearest_errors(p, t) for p, t in zip(pts, truths, strict=True)]))
    assert err["prior"] < 0.9 * err["free"], err


def test_non_finite_input_neither_raises_nor_yields_non_finite_points():
    maps = np.zeros((3, 33, 33))
    maps[0] = np.nan
    maps[1, 16, 16] = np.inf
    maps[2, 16, 16] = 500.0
    wins = np.zeros((3, 5, 11, 11))
    wins[2] = np.nan  # a good map with broken frames
    for pts in extract_points(maps, wins):
        assert np.all(np.isfinite(pts))


def tilted_groups(seed: int, count: int, tilt: float):
    """``count`` still 3-target groups on a static background that rises ``tilt`` grey
    levels per pixel along rows and columns from the patch centre (the ring median removes
    its level, not its slope), with σ = 0.5 noise; the windows have that level subtracted."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:11, 0:11]
    plane = 40.0 + tilt * ((rows - 5) + (cols - 5)) + 3.0 * np.sin(rows / 2.0)
    truths, wins = [], []
    for _ in range(count):
        t = group(rng, 3)
        truths.append(t)
        w = render_uint8(np.repeat(t[None], 5, axis=0), 0.5, background=plane, rng=rng)
        wins.append(w.astype(np.float32) - np.median(plane))
    maps = np.stack([splat_map(t[None])[0] for t in truths])
    return truths, np.stack(wins), maps


def test_the_static_texture_estimate_sees_scenes_and_not_noise():
    _, flat, _ = static_noisy_groups(seed=2, k=3, count=30, sigma=3.0)
    _, tilted, _ = tilted_groups(seed=2, count=30, tilt=3.0)
    assert np.all(estimate_texture(flat) < 1.0) and np.all(estimate_texture(tilted) > 3.0)


def test_a_background_plane_in_the_physics_fit_follows_a_sloped_scene():
    """Where a window shows static texture the physics fit also fits a background plane
    (default ``background_terms=3``): on a sloped scene its targets land closer."""
    truths, wins, maps = tilted_groups(seed=5, count=60, tilt=5.0)
    err = {}
    for terms in (0, 3):
        pts = extract_points(maps, wins, ExtractorConfig(background_terms=terms),
                             saturation=255.0 - 40.0)
        err[terms] = np.mean(np.concatenate(
            [nearest_errors(p, t) for p, t in zip(pts, truths, strict=True)]))
    assert err[3] < 0.8 * err[0], err
    with pytest.raises(ValueError, match="background_terms must be one of"):
        extract_points(maps[:1], wins[:1], ExtractorConfig(background_terms=2))


def dense_windows(k: int, trajectories: int = 3, seed: int = 5):
    """Windows of simulated K-target trajectories (SeqCSIST rules, 2–8-target layouts), their
    middle-frame truths and blurred splat maps of those truths."""
    ds = simulate(trajectories, seed, TrajectoryRules(min_targets=k, max_targets=k))
    wins, _, frames = eval_windows(ds)
    truths = [ds.frame_targets(int(f)) for f in frames]
    maps = np.stack([splat_map(t[None])[0] for t in truths])
    maps = 0.5 * maps + 0.125 * sum(np.roll(maps, s, axis=a) for s in (1, -1) for a in (1, 2))
    return truths, wins.astype(np.float32), maps


def test_layouts_are_learned_from_the_training_truths():
    """Four-target groups: one plus-shaped layout, 0.3 px (plus the outward drift) per arm."""
    ds = simulate(20, 3, TrajectoryRules(min_targets=4, max_targets=4))
    layouts = learn_layouts(ds)
    assert [e["count"] for e in layouts] == [4]
    offsets = np.array(layouts[0]["offsets"])
    assert np.allclose(np.sort(np.linalg.norm(offsets, axis=1)), 0.3, atol=0.02)
    assert np.allclose(np.sort(np.abs(offsets).max(axis=1)), 0.3, atol=0.02)


def test_the_layout_prior_resolves_an_eight_target_group():
    """Eight targets 0.21–0.3 px apart: the free fit cannot place them, the layout fit can."""
    truths, wins, maps = dense_windows(8)
    free = extract_points(maps, wins, ExtractorConfig(layouts="none"))
    layout = extract_points(maps, wins)
    err_free = np.concatenate([nearest_errors(p, t) for p, t in zip(free, truths, strict=True)])
    err = np.concatenate([nearest_errors(p, t) for p, t in zip(layout, truths, strict=True)])
    assert all(len(p) == 8 for p in layout)
    assert np.median(err) < 0.02 < np.median(err_free)
    assert np.quantile(err, 0.9) < 0.05


def test_the_layout_fit_finds_targets_the_map_mass_undercounts():
    """A map whose mass counts 6 of 8 targets: the layout fit tries 6, 7 and 8 targets and
    keeps 8; without layouts (or with count_search 0) the count stays 6."""
    truths, wins, maps = dense_windows(8, trajectories=1)
    maps = maps * 6 / 8
    assert set(estimate_counts(maps, ExtractorConfig()).tolist()) == {6}
    assert {len(p) for p in extract_points(maps, wins)} == {8}
    for cfg in (ExtractorConfig(layouts="none"), ExtractorConfig(count_search=0)):
        assert {len(p) for p in extract_points(maps, wins, cfg)} == {6}


def test_counts_without_a_learned_layout_take_the_free_fit(tmp_path):
    """A layouts file with only K = 2 leaves 3-target windows to the fit without layouts."""
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"layouts": [
        {"count": 2, "offsets": [[0.15, 0.15], [-0.15, -0.15]], "frames": 1}]}))
    truths, wins, maps = dense_windows(3, trajectories=1)
    only_two = extract_points(maps, wins, ExtractorConfig(layouts=str(path)))
    free = extract_points(maps, wins, ExtractorConfig(layouts="none"))
    for a, b in zip(only_two, free, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_unreadable_layouts_file_names_the_fix(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    truths, wins, maps = dense_windows(2, trajectories=1)
    for source in (str(bad), str(tmp_path / "missing.json")):
        with pytest.raises(ConfigError, match="python -m models layouts"):
            extract_points(maps[:1], wins[:1], ExtractorConfig(layouts=source))


def test_a_faint_floor_over_the_map_does_not_pull_the_crop_off_the_group():
    """A +1 grey floor on every cell of a 33×33 map holds ~1,000 grey of mass, four targets'
    worth: the crop is still centred on the group (above 10 % of the map's maximum), so the
    count and the points stay those of the clean map."""
    rng = np.random.default_rng(7)
    truths = [group(rng, 2, centre=(7.5, 7.5)) for _ in range(4)]
    wins = np.stack([render_uint8(np.repeat(t[None], 5, axis=0)) for t in truths]).astype(
        np.float32)
    maps = np.stack([splat_map(t[None])[0] for t in truths]) + 1.0
    assert estimate_counts(maps, ExtractorConfig()).tolist() == [2, 2, 2, 2]
    for p, t in zip(extract_points(maps, wins), truths, strict=True):
        assert len(p) == 2 and nearest_errors(p, t).max() < 0.05


def lone_and_pairs(seed: int, sigma: float = 0.5):
    """Windows of a dim lone target, a bright one, an empty window and an uneven pair, with
    their splat maps blurred like a network output; (truths, windows, maps)."""
    rng = np.random.default_rng(seed)
    truths = [np.array([[5.2, 4.7, 90.0]]), np.array([[4.6, 5.3, 240.0]]), np.zeros((0, 3)),
              np.array([[5.0, 5.0, 230.0], [5.1, 5.8, 100.0]])]
    wins, maps = [], []
    for t in truths:
        frames = np.repeat(t[None], 5, axis=0) if len(t) else np.full((5, 1, 3), np.nan)
        wins.append(render_uint8(frames, 0.5, rng=rng, sigma=sigma).astype(np.float32))
        m = splat_map(t[None])[0] if len(t) else np.zeros((33, 33), np.float32)
        maps.append(0.5 * m + 0.125 * sum(np.roll(m, s, axis=a) for s in (1, -1) for a in (0, 1)))
    return truths, np.stack(wins), np.stack(maps)


def test_count_by_fit_finds_dim_targets_the_mass_count_misses():
    truths, wins, maps = lone_and_pairs(3)
    by_mass = extract_points(maps, wins, ExtractorConfig(layouts="none"))
    by_fit = extract_points(maps, wins, ExtractorConfig(count="fit", layouts="none"))
    assert [len(p) for p in by_mass][:1] == [0]  # 90 grey levels: mass / 235 rounds to 0
    assert [len(p) for p in by_fit] == [1, 1, 0, 2]
    for p, t in zip(by_fit, truths, strict=True):
        if len(t):
            assert nearest_errors(p, t).max() < 0.05
            np.testing.assert_allclose(np.sort(p[:, 2]), np.sort(t[:, 2]), rtol=0.1)


def test_count_by_fit_fits_with_the_stated_psf():
    truths, wins, maps = lone_and_pairs(4, sigma=0.7)
    cfg = ExtractorConfig(count="fit", layouts="none")
    right = extract_points(maps, wins, cfg, sigma=0.7)
    wrong = extract_points(maps, wins, cfg, sigma=0.5)
    assert [len(p) for p in right] == [1, 1, 0, 2]
    assert nearest_errors(right[3], truths[3]).max() < 0.05
    assert sum(len(p) for p in wrong) > 4  # a narrower PSF needs more targets for the light


def test_count_by_fit_needs_the_physics_fit():
    with pytest.raises(ValueError, match="count='fit'.*refine='physics'"):
        extract_points(np.zeros((1, 33, 33)), np.zeros((1, 5, 11, 11)),
                       ExtractorConfig(count="fit", refine="splat"))
    with pytest.raises(ValueError, match="count must be one of"):
        extract_points(np.zeros((1, 33, 33)), np.zeros((1, 5, 11, 11)),
                       ExtractorConfig(count="brightness"))


def test_count_by_fit_takes_a_learned_layout_where_the_data_match_it():
    """'+' groups of the paper's rules: the layout fit wins the comparison (counts right,
    errors no larger than the free fit's); a lone dim target still gets its own fit."""
    windows, _, frames = eval_windows(simulate(4, seed=12))
    ds = simulate(4, seed=12)
    truths = [ds.frame_targets(int(f)) for f in frames]
    maps = splat_map(ds.targets[frames])
    maps = 0.5 * maps + 0.125 * sum(np.roll(maps, s, axis=a) for s in (1, -1) for a in (1, 2))
    free = extract_points(maps, windows, ExtractorConfig(count="fit", layouts="none"))
    laid = extract_points(maps, windows, ExtractorConfig(count="fit"))
    right = {name: np.mean([len(p) == len(t) for p, t in zip(pts, truths, strict=True)])
             for name, pts in (("free", free), ("laid", laid))}
    assert right["laid"] >= 0.95 and right["laid"] >= right["free"], right
    err = {name: np.concatenate([nearest_errors(p, t) for p, t in zip(pts, truths, strict=True)
                                 if len(p) == len(t)])
           for name, pts in (("free", free), ("laid", laid))}
    assert np.mean(err["laid"]) <= np.mean(err["free"]) + 1e-9
    truths, wins, lone_maps = lone_and_pairs(3)
    lone = extract_points(lone_maps[:1], wins[:1], ExtractorConfig(count="fit"))
    assert len(lone[0]) == 1 and nearest_errors(lone[0], truths[0]).max() < 0.05


def test_count_by_fit_can_take_the_brightness_prior():
    """A dim spot beside a bright one: without a prior the fit may split the light any way;
    with the prior around the targets' true brightness the fitted brightness stays near it."""
    rng = np.random.default_rng(2)
    truth = np.array([[5.0, 5.0, 235.0], [5.0, 5.45, 235.0]])
    wins = render_uint8(np.repeat(truth[None], 5, axis=0), 1.0, rng=rng)[None].astype(np.float32)
    m = splat_map(truth[None])[0]
    maps = (0.5 * m + 0.125 * sum(np.roll(m, s, axis=a) for s in (1, -1) for a in (0, 1)))[None]
    cfg = ExtractorConfig(count="fit", layouts="none", brightness_prior=True,
                          physics_brightness_std=8.66)
    (with_prior,) = extract_points(maps, wins, cfg)
    assert len(with_prior) == 2
    np.testing.assert_allclose(with_prior[:, 2], 235.0, atol=20.0)
