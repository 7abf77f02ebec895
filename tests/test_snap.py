"""Snapped mode: sub-pixel points placed on the reference grid, ranked by node distance."""

from __future__ import annotations

import numpy as np
import pytest

from models.harness import detections_from_maps
from models.protocol import eval_frames, grid_oracle, ground_truths, snapped_oracle
from models.snap import SCORE_SLOPE, SCORE_TOP, snap_map, snap_points
from sim.dataset import simulate
from sim.render import gt_map


def test_a_point_goes_to_its_nearest_node_scored_by_distance():
    dets = snap_points([[5.1, 4.9]])
    # nodes sit every 1/3 px from 0: (5.0, 5.0) is nearest, 0.1414 px away
    np.testing.assert_allclose(dets, [[5.0, 5.0, SCORE_TOP - SCORE_SLOPE * np.hypot(0.1, 0.1)]])
    on_node = snap_points([[2 + 1 / 3, 7 - 1 / 3]])
    np.testing.assert_allclose(on_node, [[2 + 1 / 3, 7 - 1 / 3, SCORE_TOP]])


def test_two_points_on_one_node_share_it_by_score():
    # both points are nearest to node (5, 5); the higher-scored one keeps it
    dets = snap_points([[5.02, 5.0, 100.0], [4.98, 5.0, 200.0]])
    assert dets.shape == (2, 3)
    np.testing.assert_allclose(dets[0, :2], [5.0, 5.0])
    assert dets[0, 2] == pytest.approx(SCORE_TOP - SCORE_SLOPE * 0.02)
    # the other point takes its next-nearest node (5 + 1/3, 5), with a lower score
    np.testing.assert_allclose(dets[1, :2], [5 + 1 / 3, 5.0])
    assert dets[1, 2] == pytest.approx(SCORE_TOP - SCORE_SLOPE * (1 / 3 - 0.02))


def test_a_node_nearer_another_point_is_left_to_that_point():
    # A's nearest node (5, 5) lies nearer to B: the metric would count a detection there
    # against B, so A takes its nearest node of its own, (5, 5 + 1/3), and B gets (5, 5)
    dets = snap_points([[5.0, 5.12, 200.0], [5.0, 4.95, 100.0]])
    np.testing.assert_allclose(dets[:, :2], [[5.0, 5 + 1 / 3], [5.0, 5.0]])
    np.testing.assert_allclose(dets[:, 2], [SCORE_TOP - SCORE_SLOPE * (5 + 1 / 3 - 5.12),
                                            SCORE_TOP - SCORE_SLOPE * 0.05])


def test_empty_frames_and_off_grid_points():
    assert snap_points(np.zeros((0, 3))).shape == (0, 3)
    assert snap_points([[-3.0, 5.0]]).shape == (0, 3)  # more than a node off the map


def test_ranking_by_node_distance_beats_the_plain_gt_map():
    """The exact points snapped and ranked score well above the exact GT map in grid mode:
    at small δ only points near a node count, and ranking puts those first."""
    ds = simulate(4, seed=11)
    snapped, grid = snapped_oracle(ds), grid_oracle(ds)
    assert snapped["mAP"] > grid["mAP"] + 0.05
    assert snapped["AP10"] > 3 * grid["AP10"] and snapped["AP15"] > grid["AP15"] + 0.1


def test_snapped_mode_snaps_the_extractors_points():
    ds = simulate(2, seed=5)
    frames, _ = eval_frames(ds)
    maps = gt_map(ds.targets[frames])
    windows = ds.images[frames[:, None] + np.arange(-2, 3)].astype(np.float32)
    points = detections_from_maps(maps, windows, "points")
    snapped = detections_from_maps(maps, windows, "snapped")
    assert [len(s) for s in snapped] == [len(p) for p in points]
    for p, s in zip(points, snapped, strict=True):
        np.testing.assert_allclose(s, snap_points(p))
    nodes = np.concatenate(snapped)[:, :2] * 3
    np.testing.assert_allclose(nodes, np.round(nodes), atol=1e-9)
    truths = ground_truths(ds, frames)
    assert all(len(t) == len(s) for t, s in zip(truths, snapped, strict=True))
    with pytest.raises(ValueError, match="snapped"):
        detections_from_maps(maps, windows, "nearest")


def test_snap_map_renders_the_snapped_truth_read_back_by_the_grid_rule():
    ds = simulate(2, seed=3)
    frames, _ = eval_frames(ds)
    maps = snap_map(ds.targets[frames])
    dets = detections_from_maps(maps, np.zeros((len(maps), 5, 11, 11)), "grid")
    truths = ground_truths(ds, frames)
    for d, t in zip(dets, truths, strict=True):
        expected = snap_points(t[:, :2])
        order = np.lexsort((expected[:, 1], expected[:, 0]))  # the grid rule is row-major
        np.testing.assert_allclose(d, expected[order], atol=1e-5)
    assert np.count_nonzero(maps) == sum(len(t) for t in truths)
