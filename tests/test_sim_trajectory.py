"""Trajectory rules (paper §III, docs/reference.md §7) over many seeds, the variants, and an
independent re-render of a CLI-generated official-layout set (the issue's acceptance check)."""

import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sim.backgrounds import load_backgrounds
from sim.dataset import simulate
from sim.families import generate_trajectories
from sim.trajectory import TrajectoryRules

REPO = Path(__file__).resolve().parents[1]
AXES = {(-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)}
DIAGONALS = {(a / math.sqrt(2), b / math.sqrt(2)) for a in (-1, 1) for b in (-1, 1)}
EPS = 1e-9
PAPER_RULES = TrajectoryRules()


def reference_path(traj: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Recover the reference point of one trajectory (T, K, 3): (rows (T,), cols (T,) or None).

    Row: at frame 0 every target is within 0.3 px of the integer start row x0, so x0 is the
    rounded row of any target, and the rule gives row(t) = x0 ± 0.04·t. Column: a target
    straight above or below the reference shares its column exactly (its column offset is
    0.0). With neither (left + right only) the column is not observable: None.
    """
    x0 = np.rint(traj[0, :, 0])
    assert np.all(x0 == x0[0]), "frame-0 targets do not share an integer reference row"
    x0 = x0[0]
    assert 1 <= x0 <= 9, f"start row {x0} not in 1..9"
    step = 0.04 if x0 < 5 else -0.04
    rows = x0 + step * np.arange(len(traj))
    vertical = np.abs(np.abs(traj[0, :, 0] - x0) - 0.3) < EPS
    if not vertical.any():
        return rows, None
    cols = traj[:, vertical, 1]
    assert np.all(cols == cols[:, :1]), "targets above/below the reference disagree on its column"
    return rows, cols[:, 0]


def assert_trajectory_rules(traj: np.ndarray, rules: TrajectoryRules = PAPER_RULES):
    """Every rule of the paper on one trajectory (T, K, 3) without padding."""
    n_frames, k = traj.shape[:2]
    assert n_frames == 20
    assert rules.min_targets <= k <= rules.max_targets
    bright = traj[..., 2]
    assert np.all(bright == bright[0]), "brightness changes along the trajectory"
    assert np.all((bright >= 220) & (bright <= 250))
    pos = traj[..., :2]
    assert np.all((pos >= 0.5) & (pos <= 9.5)), "group not well inside the patch"

    rows, cols = reference_path(traj)
    if cols is None:  # left + right only: the column of the reference is not observable
        assert k == 2
        assert np.all(np.abs(pos[..., 0] - rows[:, None]) < EPS), "reference row rule broken"
        spread = np.abs(pos[:, 0, 1] - pos[:, 1, 1])  # = d_left + d_right
        assert abs(spread[0] - 0.6) < EPS
        inc = np.diff(spread)
        assert np.all((inc >= -EPS) & (inc <= 2 * 0.0014 + EPS))
        return
    offset = pos - np.stack([rows, cols], axis=1)[:, None, :]  # (T, K, 2)
    dist = np.linalg.norm(offset, axis=-1)
    assert np.all(np.abs(dist[0] - 0.3) < EPS), "frame-0 targets not 0.3 px from the reference"
    inc = np.diff(dist, axis=0)
    assert np.all((inc >= -EPS) & (inc <= 0.0014 + EPS)), "drift increment outside [0, 0.0014]"
    directions = offset / dist[..., None]
    assert np.all(np.abs(directions - directions[0]) < 1e-6), "a target changed direction"
    found = {tuple(float(v) for v in np.round(d, 9)) for d in directions[0]}
    assert len(found) == k, "two targets share a direction"
    allowed = {tuple(round(v, 9) for v in d) for d in AXES | (DIAGONALS if k > 4 else set())}
    assert found <= allowed, f"directions {found} not among {allowed}"
    if k > 4:
        assert {tuple(float(v) for v in d) for d in AXES} <= found


def unpadded(traj: np.ndarray) -> np.ndarray:
    return traj[:, np.all(np.isfinite(traj[0]), axis=-1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_rules_hold_over_many_trajectories(seed):
    trajectories = generate_trajectories(400, seed)
    x0s, counts = set(), set()
    for traj in trajectories:
        traj = unpadded(traj)
        assert_trajectory_rules(traj)
        x0s.add(int(np.rint(traj[0, 0, 0])))
        counts.add(traj.shape[1])
    assert x0s == set(range(1, 10))
    assert counts == {2, 3, 4}


def test_checker_rejects_broken_trajectories():
    traj = unpadded(generate_trajectories(1, 7)[0])
    bad_speed = traj.copy()
    bad_speed[..., 0] += 0.01 * np.arange(20)[:, None]
    bad_bright = traj.copy()
    bad_bright[5, 0, 2] += 1.0
    bad_drift = traj.copy()
    bad_drift[10:, 0, :2] += 0.01 * (traj[10:, 0, :2] - traj[10:, 1, :2])
    for broken in (bad_speed, bad_bright, bad_drift):
        with pytest.raises(AssertionError):
            assert_trajectory_rules(broken)


def test_generation_is_deterministic_and_prefix_stable():
    a = generate_trajectories(30, 5)
    np.testing.assert_array_equal(a, generate_trajectories(30, 5))
    np.testing.assert_array_equal(a[:10], generate_trajectories(10, 5))
    assert not np.array_equal(a, generate_trajectories(30, 6), equal_nan=True)


def test_two_to_eight_target_variant():
    rules = TrajectoryRules(min_targets=2, max_targets=8)
    trajectories = generate_trajectories(300, 3, rules)
    assert trajectories.shape == (300, 20, 8, 3)
    counts = set()
    for traj in trajectories:
        traj = unpadded(traj)
        assert_trajectory_rules(traj, rules)
        counts.add(traj.shape[1])
    assert counts == set(range(2, 9))


def test_additive_noise_has_the_requested_std():
    sigma = 3.0
    clean = simulate(500, 4)
    noisy = simulate(500, 4, noise_sigma=sigma)
    np.testing.assert_array_equal(clean.targets, noisy.targets)
    # Away from the 0 and 255 clips, noisy − clean = noise + two roundings (each var 1/12).
    inside = (clean.images >= 20) & (clean.images <= 230)
    diff = noisy.images[inside].astype(np.float64) - clean.images[inside]
    assert inside.sum() > 20_000
    assert abs(diff.mean()) < 0.05
    assert diff.std() == pytest.approx(math.sqrt(sigma**2 + 1 / 6), abs=0.06)
    assert np.any(noisy.images != clean.images)


def _write_grey(path: Path, image: np.ndarray) -> None:
    assert cv2.imwrite(str(path), image)


def test_background_crops_are_scaled_windows_of_the_folder_images(tmp_path):
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    img16 = rng.integers(0, 65536, (20, 25), dtype=np.uint16)
    _write_grey(tmp_path / "a.png", img8)
    _write_grey(tmp_path / "b.png", img16)
    _write_grey(tmp_path / "tiny.png", np.zeros((5, 5), np.uint8))  # too small: skipped
    (tmp_path / "notes.txt").write_text("not an image")
    crops = load_backgrounds(tmp_path, 60, np.random.default_rng(1), amplitude=100.0)
    assert crops.shape == (60, 11, 11)
    assert crops.min() >= 0 and crops.max() <= 100.0
    windows = [
        np.lib.stride_tricks.sliding_window_view(img / scale * 100.0, (11, 11))
        for img, scale in ((img8, 255.0), (img16, 65535.0))
    ]
    used = set()
    for crop in crops:
        hits = [
            i for i, w in enumerate(windows)
            if np.any(np.all(np.abs(w - crop) < 1e-9, axis=(-2, -1)))
        ]
        assert hits, "crop is not a window of any folder image"
        used.update(hits)
    assert used == {0, 1}
    again = load_backgrounds(tmp_path, 60, np.random.default_rng(1), amplitude=100.0)
    np.testing.assert_array_equal(crops, again)


def test_backgrounds_are_added_to_every_frame(tmp_path):
    _write_grey(tmp_path / "white.png", np.full((16, 16), 255, np.uint8))
    bg = load_backgrounds(tmp_path, 5, np.random.default_rng(0), amplitude=64.0)
    assert np.all(bg == 64.0)
    clean = simulate(5, 9)
    with_bg = simulate(5, 9, backgrounds=bg)
    expected = np.minimum(clean.images.astype(np.int64) + 64, 255)
    np.testing.assert_array_equal(with_bg.images, expected)


def test_background_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_backgrounds(tmp_path / "nope", 3, np.random.default_rng(0))
    _write_grey(tmp_path / "small.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="no image of at least 11×11"):
        load_backgrounds(tmp_path, 3, np.random.default_rng(0))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_backgrounds(tmp_path, 3, np.random.default_rng(0))


def test_cli_official_set_matches_an_independent_renderer_and_the_rules(tmp_path, render_xml):
    out = tmp_path / "set"
    subprocess.run(
        [sys.executable, "-m", "sim", "generate", "--out", str(out), "--trajectories", "8",
         "--seed", "21", "--quiet"],
        cwd=REPO, check=True, timeout=120, capture_output=True,
    )
    for split in ("train", "val", "test"):
        images = sorted((out / split / "image").glob("image_*.png"),
                        key=lambda p: int(p.stem.split("_")[1]))
        assert len(images) % 20 == 0 and images
        frames = []
        for path in images:
            expected, objects, _ = render_xml(out / split / "annotation"
                                              / f"COS{path.stem[6:]}.xml")
            png = np.asarray(Image.open(path))
            assert png.shape == (11, 11) and png.dtype == np.uint8
            expected = np.clip(expected, 0, 255)
            assert np.abs(png - expected).max() <= 0.5 + 1e-9  # round to nearest
            frames.append(objects)
        for j in range(len(frames) // 20):
            assert_trajectory_rules(np.array(frames[20 * j : 20 * j + 20]))
