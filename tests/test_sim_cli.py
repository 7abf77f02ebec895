"""`python -m sim` in a subprocess on tiny sets: generate (both formats), show, bench, errors."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sim.seqcsist_io import load_dataset
from sim.sheet import COLOURS, GAP, TITLE_HEIGHT

REPO = Path(__file__).resolve().parents[1]


def run_sim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sim", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The same 20 trajectories (seed 5) in both formats."""
    root = tmp_path_factory.mktemp("cli")
    for fmt in ("seqcsist", "npz"):
        result = run_sim("generate", "--out", str(root / fmt), "--trajectories", "20",
                         "--seed", "5", "--format", fmt)
        assert result.returncode == 0, result.stderr
        assert "frame" in result.stderr  # the progress bar
    return root


def test_generate_writes_the_official_layout_and_a_recipe(generated):
    root = generated / "seqcsist"
    assert sorted(p.name for p in root.iterdir()) == ["recipe.json", "test", "train", "val"]
    assert (root / "train" / "image" / "image_279.png").is_file()
    assert (root / "train" / "annotation" / "COS279.xml").is_file()
    recipe = json.loads((root / "recipe.json").read_text())
    assert recipe["seed"] == 5 and recipe["arguments"]["format"] == "seqcsist"
    assert recipe["rules"]["min_targets"] == 2 and recipe["rules"]["max_targets"] == 4
    assert {k: v["trajectories"] for k, v in recipe["counts"].items()} == {
        "train": 14, "val": 3, "test": 3,
    }
    assert "version" in recipe
    for split, frames in (("train", 280), ("val", 60), ("test", 60)):
        assert len(load_dataset(root, split)) == frames


def test_both_formats_hold_the_same_data(generated):
    assert sorted(p.name for p in (generated / "npz").iterdir()) == [
        "recipe.json", "test.npz", "train.npz", "val.npz",
    ]
    for split in ("train", "val", "test"):
        official = load_dataset(generated / "seqcsist", split)
        compact = load_dataset(generated / "npz", split)
        np.testing.assert_array_equal(official.images, compact.images)
        k = official.targets.shape[1]
        np.testing.assert_array_equal(official.targets, compact.targets[:, :k])


def test_generate_is_deterministic_per_seed(generated, tmp_path):
    result = run_sim("generate", "--out", str(tmp_path / "again"), "--trajectories", "20",
                     "--seed", "5", "--quiet", "--workers", "1")
    assert result.returncode == 0, result.stderr
    for path in (generated / "seqcsist").rglob("*.*"):
        twin = tmp_path / "again" / path.relative_to(generated / "seqcsist")
        assert path.read_bytes() == twin.read_bytes(), path


def test_generate_variants(tmp_path, generated):
    result = run_sim("generate", "--out", str(tmp_path / "v"), "--trajectories", "6",
                     "--seed", "5", "--format", "npz", "--targets", "2-8", "--noise", "3",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    ds = load_dataset(tmp_path / "v", "train")
    assert ds.targets.shape[1] <= 8 and ds.counts.min() >= 2
    recipe = json.loads((tmp_path / "v" / "recipe.json").read_text())
    assert recipe["rules"]["max_targets"] == 8 and recipe["arguments"]["noise_sigma"] == 3.0


def test_generate_errors(generated):
    result = run_sim("generate", "--out", str(generated / "seqcsist"), "--trajectories", "20",
                     "--seed", "5")
    assert result.returncode == 2 and "already holds" in result.stderr
    result = run_sim("generate", "--out", str(generated / "x"), "--trajectories", "2",
                     "--seed", "5")
    assert result.returncode == 2 and "at least 3 trajectories" in result.stderr
    result = run_sim("generate", "--out", str(generated / "x"), "--trajectories", "9",
                     "--seed", "5", "--targets", "4-2")
    assert result.returncode == 2 and "1 <= min <= max" in result.stderr


def test_show_writes_a_sheet_with_markers_at_the_targets(generated, tmp_path):
    out = tmp_path / "sheet.png"
    result = run_sim("show", "--data", str(generated / "seqcsist"), "--split", "val",
                     "--trajectory", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    sheet = cv2.imread(str(out), cv2.IMREAD_COLOR)
    # 4 rows × 5 columns of 176-px tiles, 8-px gaps, 28-px title bar.
    assert sheet.shape == (28 + 4 * 176 + 5 * 8, 5 * 176 + 6 * 8, 3)
    targets = load_dataset(generated / "seqcsist", "val").trajectory_targets()[2]
    for t in (0, 13):
        top = TITLE_HEIGHT + GAP + (t // 5) * (176 + GAP)
        left = GAP + (t % 5) * (176 + GAP)
        for k, (row, col, _) in enumerate(targets[t]):
            if np.isnan(row):
                continue
            r = top + (row + 0.5) * 16 - 0.5
            c = left + (col + 0.5) * 16 - 0.5
            dot = sheet[int(round(r)), int(round(c))]
            assert tuple(int(v) for v in dot) == COLOURS[k], (t, k)


def test_show_errors(generated, tmp_path):
    result = run_sim("show", "--data", str(generated / "npz"), "--split", "dev",
                     "--out", str(tmp_path / "s.png"))
    assert result.returncode == 2 and "no split 'dev'" in result.stderr
    result = run_sim("show", "--data", str(generated / "npz" / "test.npz"),
                     "--trajectory", "3", "--out", str(tmp_path / "s.png"))
    assert result.returncode == 2 and "trajectory 3 out of range" in result.stderr


def test_bench_writes_figures(tmp_path):
    out = tmp_path / "bench.json"
    result = run_sim("bench", "--trajectories", "6", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    steps = figures["steps"]
    assert set(steps) == {"generate_npz", "load_test_npz", "generate_seqcsist",
                          "load_test_seqcsist"}
    assert steps["generate_seqcsist"]["frames"] == 120
    assert steps["generate_seqcsist"]["files"] == 2 * 120 + 1
    assert steps["load_test_npz"]["frames"] == 20
    assert figures["machine"]["cpu_count"] >= 1 and figures["machine"]["numpy"]
