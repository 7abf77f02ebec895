"""The diagnostic metrics (models/diagnostics.py) against hand-worked cases."""

import math

import numpy as np
import pytest

from models.diagnostics import (
    breakdown,
    count_accuracy,
    crlb_efficiency,
    localisation_summary,
    match_one_to_one,
    nearest_other,
)


def pts(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def test_one_to_one_matching_is_optimal_not_greedy():
    # detections at col 0.0 and 0.2, truths at 0.15 and 0.35: nearest-first would pair
    # 0.2 ↔ 0.15 and leave both others unpaired (0.35 apart); the optimum pairs both
    dets = [pts([0, 0.0, 1], [0, 0.2, 1])]
    truths = [pts([0, 0.15, 1], [0, 0.35, 1])]
    (pairs,) = match_one_to_one(dets, truths, radius=0.25)
    assert sorted(map(tuple, pairs)) == [(0, 0), (1, 1)]


def test_matching_radius_is_inclusive_and_takes_the_least_total_distance():
    dets = [pts([0, 0, 1], [0, 1, 1])]
    truths = [pts([0, 0.25, 1], [0, 0.9, 1])]
    (pairs,) = match_one_to_one(dets, truths, radius=0.25)
    assert sorted(map(tuple, pairs)) == [(0, 0), (1, 1)]
    (none,) = match_one_to_one([pts([0, 0, 1])], [pts([0, 0.26, 1])], radius=0.25)
    assert len(none) == 0


def test_localisation_summary_hand_worked():
    # frame 1: one pair with error (0.1, 0) and a false positive; frame 2: a missed truth
    dets = [pts([1, 1.1, 9], [5, 5, 9]), pts()]
    truths = [pts([1, 1, 200]), pts([3, 3, 200])]
    s = localisation_summary(dets, truths, radius=0.25)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    assert s["jaccard"] == pytest.approx(1 / 3)
    assert s["rmse"] == pytest.approx(0.1)
    assert s["efficiency"] == pytest.approx(100 - math.hypot(100 * 2 / 3, 100 * 0.1))
    assert s["recall"] == 0.5 and s["precision"] == 0.5


def test_no_pairs_give_no_rmse_and_empty_frames_are_fine():
    s = localisation_summary([pts()], [pts([1, 1, 1])])
    assert s["tp"] == 0 and s["rmse"] is None and s["efficiency"] is None
    assert s["jaccard"] == 0.0


def test_count_accuracy_per_true_k():
    truths = [pts([0, 0, 1]), pts([0, 0, 1], [1, 1, 1]), pts([0, 0, 1], [1, 1, 1])]
    dets = [pts([0, 0, 1]), pts([0, 0, 1]), pts([0, 0, 1], [2, 2, 1])]
    assert count_accuracy(dets, truths) == {"1": {"windows": 1, "right": 1.0},
                                            "2": {"windows": 2, "right": 0.5}}


def test_crlb_efficiency_is_rmse_over_root_bound():
    dets = [pts([0, 0.1, 1], [5, 5.2, 1])]
    truths = [pts([0, 0, 1], [5, 5, 1])]
    # errors 0.1 and 0.2 against bound variances 0.01 and 0.04: √(0.05 / 0.05) = 1
    assert crlb_efficiency(dets, truths, [np.array([0.01, 0.04])]) == pytest.approx(1.0)
    assert crlb_efficiency(dets, truths, [np.array([0.04, 0.16])]) == pytest.approx(0.5)
    # a truth whose bound says "not localisable" (≥ 1 px²) is left out
    assert crlb_efficiency(dets, truths, [np.array([0.01, 5.0])]) == pytest.approx(1.0)


def test_nearest_other_and_breakdown_bins():
    truths = [pts([0, 0, 100], [0, 0.5, 200]), pts([4, 4, 240])]
    np.testing.assert_allclose(nearest_other(truths)[0], [0.5, 0.5])
    assert nearest_other(truths)[1][0] == np.inf
    dets = [pts([0, 0.05, 1]), pts([4, 4, 1])]
    rows = breakdown(dets, truths, nearest_other(truths), (0.0, 0.6, np.inf),
                     hit_bound=[np.array([0.9, 0.7]), np.array([1.0])])
    assert rows[0] == {"low": 0.0, "high": 0.6, "targets": 2, "recall": 0.5,
                       "rmse": pytest.approx(0.05), "bound_recall": pytest.approx(0.8)}
    assert rows[1]["targets"] == 1 and rows[1]["recall"] == 1.0  # the lone target: inf
    by_b = breakdown(dets, truths, [t[:, 2] for t in truths], (0, 150, 250))
    assert [r["targets"] for r in by_b] == [1, 2] and by_b[0]["recall"] == 1.0
    assert by_b[1]["bound_recall"] is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2 frames of detections but 1"):
        match_one_to_one([pts(), pts()], [pts()])
    with pytest.raises(ValueError, match="radius"):
        match_one_to_one([pts()], [pts()], radius=0)
    with pytest.raises(ValueError, match="shape"):
        match_one_to_one([np.zeros((2, 2))], [pts()])
