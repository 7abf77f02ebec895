"""Pd / Fa / IoU (stages.detection_metrics) and the detector's scores on simulated scenes."""

from __future__ import annotations

import json

import numpy as np

from stages.detection_metrics import DetectionScore, match_groups, truth_mask
from stages.detector import DetectorConfig
from stages.detector_eval import evaluate, main
from stages.scene import SceneConfig, SceneSimulator


def test_each_component_detects_at_most_one_group_closest_first():
    groups = np.array([[10.0, 10.0], [10.0, 13.0], [50.0, 50.0]])
    centres = np.array([[10.0, 12.0], [10.2, 10.0], [30.0, 30.0], [10.0, 11.5]])
    owner = match_groups(centres, groups, distance=3.0)
    # (1 → group 0 at 0.2 px) and (0 → group 1 at 1.0 px) first; component 3 finds both taken
    assert owner.tolist() == [1, 0, -1, -1]
    assert match_groups(np.zeros((0, 2)), groups).tolist() == []


def test_score_pools_pd_fa_and_iou_over_frames():
    score = DetectionScore(distance=3.0)
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px on the group, matched
    mask[7:9, 7:8] = True  # 2 px of a false alarm
    truth = np.zeros_like(mask)
    truth[1:4, 1:4] = True  # 9 px
    score.add(np.array([[1.5, 1.5], [7.5, 7.0]]), np.array([4, 2]), np.array([[2.0, 2.0]]),
              100, mask, truth)
    score.add(np.zeros((0, 2)), np.zeros(0), np.array([[5.0, 5.0]]), 100, np.zeros_like(mask),
              np.zeros_like(mask))
    s = score.summary()
    assert (s["groups"], s["detected"], s["false_pixels"]) == (2, 1, 2)
    assert s["Pd"] == 0.5 and s["Fa"] == 2 / 200 and s["IoU"] == 4 / 11


def test_truth_mask_covers_each_group_above_a_fraction_of_its_peak():
    _, truth = SceneSimulator(SceneConfig(groups=2, noise_sigma=0.0), seed=1).step()
    mask = truth_mask(truth, (256, 256), 0.5)
    for r, c in truth.references:
        assert mask[int(round(r)), int(round(c))]
    assert 2 * 3 <= mask.sum() <= 2 * 40  # a few pixels per spot, not the PSF's tails


def test_tophat_meets_the_flat_goal_and_its_local_threshold_cuts_clutter_alarms():
    flat = evaluate(SceneConfig(), DetectorConfig(), frames=20, seed=3)
    assert flat["Pd"] >= 0.995 and flat["Fa"] <= 1e-5 and flat["IoU"] > 0.3
    hard = SceneConfig(scene="builtin", scene_amplitude=80.0)
    local = evaluate(hard, DetectorConfig(local_window=11), frames=20, seed=3)
    global_only = evaluate(hard, DetectorConfig(), frames=20, seed=3)
    assert global_only["Fa"] > 2 * local["Fa"] and local["Pd"] >= 0.98


def test_command_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "det.json"
    assert main(["--frames", "5", "--size", "96", "--groups", "2", "--set", "k=7",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["detector"]["k"] == 7 and doc["frames"] == 5 and doc["groups"] == 10
    assert "Pd 100.00 %" in capsys.readouterr().out
    assert main(["--frames", "5", "--set", "k=-1"]) == 2
    assert "k" in capsys.readouterr().err
