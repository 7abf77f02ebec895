"""Scene families (sim/families.py): each preset's rules hold at every frame, sets render
exactly (an independent renderer of the written XML, its own sigma), the paper's draws are
unchanged, and the noise models have the stated variance."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sim.dataset import simulate
from sim.families import PRESETS, Family, family_indices, generate_trajectories, override
from sim.render import render_uint8
from sim.trajectory import TrajectoryRules, generate_trajectory
from stages.scene import SceneConfig, SceneSimulator

REPO = Path(__file__).resolve().parents[1]


def _generate(out: Path, *options: str) -> dict:
    subprocess.run([sys.executable, "-m", "sim", "generate", "--out", str(out),
                    "--trajectories", "6", "--quiet", *options],
                   cwd=REPO, check=True, timeout=120, capture_output=True)
    return json.loads((out / "recipe.json").read_text())


def _frames(split: Path, render_xml):
    """[(png, independent render, objects)] of every frame of an official-layout split."""
    out = []
    for path in sorted((split / "image").glob("image_*.png"), key=lambda p: int(p.stem[6:])):
        expected, objects, sigma = render_xml(split / "annotation" / f"COS{path.stem[6:]}.xml")
        out.append((np.asarray(Image.open(path)), expected, np.array(objects), sigma))
    return out


def _pairwise(points: np.ndarray) -> np.ndarray:
    d = np.hypot(*(points[:, None, :2] - points[None, :, :2]).transpose(2, 0, 1))
    return d[~np.eye(len(points), dtype=bool)]


@pytest.mark.parametrize("options, sigma", [(("--preset", "csist100k"), 0.5),
                                            (("--preset", "realistic", "--psf", "0.6"), 0.6),
                                            (("--preset", "csist100k", "--psf", "0.6"), 0.6)])
def test_generated_sets_render_exactly_with_their_sigma(tmp_path, render_xml, options, sigma):
    recipe = _generate(tmp_path / "set", "--seed", "5", *options)
    assert recipe["imaging"]["psf_sigma_px"] == sigma
    assert recipe["families"][0]["rules"]["layout"] in ("pixel", "random")
    for png, expected, _, xml_sigma in _frames(tmp_path / "set" / "test", render_xml):
        assert xml_sigma == sigma
        assert np.abs(png - np.clip(expected, 0, 255)).max() <= 0.5 + 1e-9


def test_csist100k_sets_obey_its_rules_at_every_frame(tmp_path, render_xml):
    _generate(tmp_path / "set", "--seed", "9", "--preset", "csist100k")
    counts = set()
    for split in ("train", "val", "test"):
        for _, _, objects, sigma in _frames(tmp_path / "set" / split, render_xml):
            counts.add(len(objects))
            assert 1 <= len(objects) <= 5
            pixel = np.floor(objects[:, :2] + 0.5)  # the pixel each target lies in
            assert np.all(pixel == pixel[0]), "all targets inside one pixel"
            if len(objects) > 1:
                assert _pairwise(objects).min() >= 0.52 * 2 * sigma >= 0.5
            assert np.all((objects[:, 2] >= 220) & (objects[:, 2] <= 250))
    assert len(counts) >= 3


def test_random_layout_keeps_its_separation_edge_and_ranges_at_every_frame():
    rules = PRESETS["realistic"][0].rules
    traj = generate_trajectories(150, 3, rules)
    counts = np.isfinite(traj[:, 0, :, 0]).sum(axis=1)
    assert counts.min() == 1 and counts.max() == 8
    for t, k in zip(traj, counts, strict=True):
        t = t[:, :k]
        assert np.all((t[..., :2] >= rules.edge - 1e-9) & (t[..., :2] <= 10 - rules.edge + 1e-9))
        assert np.all((t[..., 2] >= 80) & (t[..., 2] <= 250))
        if k > 1:
            assert min(_pairwise(frame).min() for frame in t) >= rules.separation[0] - 1e-9
    speeds = np.hypot(*(traj[:, 1, 0, :2] - traj[:, 0, 0, :2]).T)
    assert speeds.max() <= rules.speed[1] + rules.target_drift + 1e-9
    assert speeds.max() > 0.5 * rules.speed[1]  # moves, in every direction
    directions = np.arctan2(*(traj[:, -1, 0, :2] - traj[:, 0, 0, :2]).T)
    assert np.ptp(directions) > 5.0


def test_brightness_changes_slowly_inside_its_range():
    rules = TrajectoryRules(layout="random", min_targets=3, max_targets=3,
                            brightness=(80.0, 250.0), brightness_change=0.01)
    b = generate_trajectories(40, 2, rules)[..., 2]  # (n, T, K)
    step = np.abs(np.diff(b, axis=1)) / b[:, :-1]
    assert step.max() <= 0.01 / (1 - 0.19) + 1e-9 and step.max() > 0.005
    assert b.min() >= 80 and b.max() <= 250


def test_paper_preset_draws_exactly_the_paper_trajectories():
    ss = np.random.SeedSequence(11).spawn(3)
    expected = [generate_trajectory(np.random.default_rng(s)) for s in ss]
    got = generate_trajectories(3, 11, PRESETS["paper"])
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g[:, : e.shape[1]], e)


def test_mixture_draws_families_by_weight_deterministically():
    families = (Family("a", TrajectoryRules(), 1.0),
                Family("b", TrajectoryRules(layout="pixel", min_targets=1, max_targets=1), 3.0))
    which = family_indices(4000, 1, families)
    assert abs(which.mean() - 0.75) < 0.03
    a = generate_trajectories(30, 1, families)
    np.testing.assert_array_equal(a, generate_trajectories(30, 1, families))
    lone = np.isfinite(a[:, 0, :, 0]).sum(axis=1) == 1
    np.testing.assert_array_equal(lone, which[:30] == 1)


def test_override_replaces_a_field_in_every_family_and_ignores_none():
    fams = override(PRESETS["mixture"], max_targets=6, speed=None)
    assert {f.rules.max_targets for f in fams} == {6}
    assert fams[0].rules.speed == PRESETS["mixture"][0].rules.speed


def test_shot_noise_has_variance_gain_times_level():
    targets = np.full((2000, 1, 3), np.nan)  # no targets: a flat background
    images = render_uint8(targets, background=np.full((11, 11), 100.0), gain=2.0,
                          rng=np.random.default_rng(0)).astype(np.float64)
    assert abs(images.mean() - 100.0) < 0.2
    assert abs(images.var() / (2.0 * 100.0) - 1.0) < 0.05


def test_simulate_records_the_psf_and_renders_with_it():
    wide = simulate(2, 3, PRESETS["single"], sigma=0.8)
    narrow = simulate(2, 3, PRESETS["single"], sigma=0.4)
    assert wide.sigma == 0.8 and narrow.sigma == 0.4
    np.testing.assert_array_equal(wide.targets, narrow.targets)
    assert wide.images.max() < narrow.images.max()  # the same light, spread wider


def test_impossible_pixel_layout_is_a_clear_cli_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sim", "generate", "--out", str(tmp_path / "x"),
                           "--trajectories", "30", "--seed", "1", "--preset", "csist100k",
                           "--psf", "0.75", "--quiet"],
                          cwd=REPO, timeout=300, capture_output=True, text=True)
    assert done.returncode == 2
    assert "cannot place 5 targets inside one pixel" in done.stderr
    assert "lower the target count" in done.stderr


@pytest.mark.parametrize("options", [("--brightness", "250-80"), ("--targets", "0-3"),
                                     ("--mix", "paper:1,nope:2")])
def test_bad_ranges_are_named(tmp_path, options):
    done = subprocess.run([sys.executable, "-m", "sim", "generate", "--out", str(tmp_path / "x"),
                           "--trajectories", "6", "--seed", "1", *options],
                          cwd=REPO, timeout=60, capture_output=True, text=True)
    assert done.returncode == 2 and options[0] in done.stderr


@pytest.mark.parametrize("layout, most", [("random", 8), ("pixel", 5)])
def test_scene_simulator_lays_groups_out_by_family(layout, most):
    cfg = SceneConfig(layout=layout, min_targets=most, max_targets=most, groups=4)
    sim = SceneSimulator(cfg, seed=2)
    for _ in range(60):
        _, truth = sim.step()
        for gid in truth.group_ids:
            group = truth.group_targets(gid)
            assert len(group) == most
            spread = np.hypot(*(group[:, :2] - group[:, :2].mean(axis=0)).T).max()
            assert spread <= (1.25 * cfg.radius[1] * 1.6 if layout == "random" else 0.75)
            if layout == "pixel":
                assert _pairwise(group).min() >= 0.52 * 2 * cfg.psf_sigma - 1e-9


def test_scene_config_names_the_layout_limits():
    with pytest.raises(ValueError, match="layout 'paper'"):
        SceneConfig(min_targets=1, max_targets=6)
    with pytest.raises(ValueError, match="unknown"):
        SceneConfig(layout="grid")


def test_scene_simulator_shot_noise_has_variance_gain_times_level():
    cfg = SceneConfig(groups=0, background=100.0, noise_sigma=0.0, gain=2.0, quantize=False,
                      height=64, width=64, border=4.0)
    image, _ = SceneSimulator(cfg, seed=1).step()
    assert abs(image.mean() - 100.0) < 1.0
    assert abs(image.var() / 200.0 - 1.0) < 0.1
