"""CSO-mAP: hand-built cases for every rule and a literal loop re-implementation
(docs/reference.md §3.1)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from models.metric import (
    THRESHOLDS,
    ap_key,
    average_precision,
    cso_map,
    grid_detections,
    match_detections,
)

KEYS = ["AP05", "AP10", "AP15", "AP20", "AP25"]


def reference_cso_map(detections, ground_truths, thresholds=THRESHOLDS):
    """Straightforward loops following docs/reference.md §3.1 literally (stable tie order)."""
    n_gt = sum(len(g) for g in ground_truths)
    result = {}
    for delta in thresholds:
        pooled = []  # (score, is_tp) in frame order, detections as listed
        for dets, gts in zip(detections, ground_truths, strict=True):
            flags = [False] * len(dets)
            if len(gts):
                matched = [False] * len(gts)
                for i in sorted(range(len(dets)), key=lambda i: -dets[i][2]):  # stable
                    dist = [
                        math.sqrt(
                            (dets[i][0] - g[0]) * (dets[i][0] - g[0])
                            + (dets[i][1] - g[1]) * (dets[i][1] - g[1])
                        )
                        for g in gts
                    ]
                    j = dist.index(min(dist))  # first nearest GT
                    if dist[j] <= delta and not matched[j]:
                        matched[j] = True
                        flags[i] = True
            pooled += [(dets[i][2], flags[i]) for i in range(len(dets))]
        pooled.sort(key=lambda p: -p[0])  # stable
        recall, precision, tp, fp = [], [], 0, 0
        for _, is_tp in pooled:
            tp, fp = tp + is_tp, fp + (not is_tp)
            recall.append(tp / n_gt if n_gt else 0.0)
            precision.append(tp / (tp + fp))
        mrec, mpre = [0.0, *recall, 1.0], [0.0, *precision, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        ap = 0.0
        for i in range(len(mrec) - 1):
            if mrec[i + 1] != mrec[i]:
                ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1]
        result[ap_key(delta)] = ap
    result["mAP"] = sum(result.values()) / len(thresholds)
    return result


def arr(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def test_nearest_gt_already_matched_is_fp_even_with_free_gt_in_range():
    gts = [arr((5, 5, 230), (5, 5.2, 230))]
    # second detection: nearest GT is A (0.09 away, matched); B (0.11 away) is free and within δ.
    dets = [arr((5, 5, 100), (5, 5.09, 90))]
    r = cso_map(dets, gts, thresholds=(0.15,))
    assert r["AP15"] == pytest.approx(0.5)


def test_detection_beyond_delta_does_not_consume_its_gt():
    gts = [arr((5, 5, 230))]
    dets = [arr((5, 5.2, 100), (5, 5, 50))]
    r = cso_map(dets, gts)
    assert r["AP10"] == pytest.approx(0.5)  # FP (beyond δ), then TP
    assert r["AP25"] == pytest.approx(1.0)  # TP, then FP (its nearest GT is taken)


def test_distance_exactly_delta_is_a_true_positive():
    gts = [arr((5, 5, 230))]
    dets = [arr((5, 5.25, 100))]  # distance exactly 0.25 in float64
    r = cso_map(dets, gts)
    assert r["AP25"] == 1.0
    assert r["AP20"] == 0.0
    above = cso_map([arr((5, np.nextafter(5.25, 6), 100))], gts)
    assert above["AP25"] == 0.0


def test_frames_without_detections_count_in_recall():
    gts = [arr((1, 1, 230)), arr((3, 3, 230))]
    dets = [arr((1, 1, 100)), np.zeros((0, 3))]
    r = cso_map(dets, gts)
    assert all(r[k] == pytest.approx(0.5) for k in KEYS)


def test_frame_without_gt_makes_its_detections_false_positives():
    gts = [arr((1, 1, 230)), np.zeros((0, 3))]
    high_fp = cso_map([arr((1, 1, 50)), arr((1, 1, 100))], gts)
    low_fp = cso_map([arr((1, 1, 50)), arr((1, 1, 10))], gts)
    assert high_fp["AP05"] == pytest.approx(0.5)
    assert low_fp["AP05"] == pytest.approx(1.0)


def test_score_ties_in_the_pooled_ranking_keep_frame_order():
    tp_frame, fp_frame = arr((1, 1, 80)), arr((9, 9, 80))
    gts_tp, gts_fp = arr((1, 1, 230)), arr((2, 2, 230))
    first = cso_map([tp_frame, fp_frame], [gts_tp, gts_fp])
    second = cso_map([fp_frame, tp_frame], [gts_fp, gts_tp])
    # n_gt = 2: TP then FP → AP 0.5; FP then TP → precision 0.5 at recall 0.5 → AP 0.25.
    assert first["AP05"] == pytest.approx(0.5)
    assert second["AP05"] == pytest.approx(0.25)


def test_score_ties_inside_a_frame_keep_listed_order():
    gts = [arr((5, 5, 230))]
    near, far = (5, 5, 80), (5, 5.2, 80)
    # Listed first wins the match at δ = 0.25 and is ranked first: TP, FP → AP 1.
    assert cso_map([arr(far, near)], gts)["AP25"] == 1.0
    assert cso_map([arr(near, far)], gts)["AP25"] == 1.0
    m = match_detections([arr(far, near)], gts, thresholds=(0.25, 0.1))
    assert m.tp.tolist() == [[True, False], [False, True]]


def test_nearest_gt_tie_goes_to_the_first_listed_gt():
    gts = [arr((5, 4.75, 230), (5, 5.25, 230))]
    dets = [arr((5, 5, 100), (5, 5, 90))]  # both equidistant → both look at GT 0 only
    m = match_detections(dets, gts, thresholds=(0.25,))
    assert m.tp.tolist() == [[True, False]]


def test_map_is_the_mean_of_unrounded_aps():
    gts = [arr((1, 1, 230), (3, 3, 230), (6, 6, 230))]
    dets = [arr((1, 1, 100), (3, 3.12, 90), (6, 6.22, 80), (8, 8, 95))]
    r = cso_map(dets, gts)
    aps = [r[k] for k in KEYS]
    assert r["mAP"] == pytest.approx(np.mean(aps), abs=1e-15)
    assert any(abs(a - round(a, 3)) > 1e-6 for a in aps)  # not 3-decimal values
    assert r["mAP"] != pytest.approx(np.mean([round(a, 3) for a in aps]), abs=1e-6)


@pytest.mark.parametrize(
    "dets, gts",
    [
        ([np.zeros((0, 3)), np.zeros((0, 3))], [arr((1, 1, 230)), arr((2, 2, 230))]),
        ([], []),
        ([arr((1, 1, 100))], [np.zeros((0, 3))]),
        ([[]], [[]]),
    ],
)
def test_nothing_to_score_gives_zero(dets, gts):
    assert cso_map(dets, gts) == {"mAP": 0.0, **dict.fromkeys(KEYS, 0.0)}


def test_average_precision_voc_area_on_a_known_curve():
    # recall 0.5 @ p 1, then 0.5 @ p 0.5, then 1.0 @ p 2/3: envelope 1 then 2/3.
    ap = average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_bad_inputs_are_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="one entry per frame"):
        cso_map([arr((1, 1, 1))], [])
    with pytest.raises(ValueError, match=r"detections\[0\] must have shape \(n, 3\)"):
        cso_map([np.zeros((2, 2))], [arr((1, 1, 1))])
    with pytest.raises(ValueError, match="NaN"):
        cso_map([arr((np.nan, 1, 1))], [arr((1, 1, 1))])


def test_grid_detections_threshold_position_and_order():
    m = np.zeros((33, 33), dtype=np.float32)
    m[16, 7] = 70.0  # exactly the threshold: kept (only values < 70 are zeroed)
    m[1, 1] = 69.9
    m[2, 2] = -500.0
    m[0, 32] = 200.0
    m[32, 0] = 71.5
    d = grid_detections(m)
    assert d.dtype == np.float64
    np.testing.assert_array_equal(
        d, [[-1 / 3, 31 / 3, 200.0], [5.0, 2.0, 70.0], [31 / 3, -1 / 3, 71.5]]
    )


def test_grid_detections_batch_matches_single_maps():
    rng = np.random.default_rng(3)
    maps = rng.normal(0, 60, size=(4, 33, 33)).astype(np.float32)
    maps[2] = 0.0  # a frame without detections
    batch = grid_detections(maps)
    assert len(batch) == 4 and batch[2].shape == (0, 3)
    for one, m in zip(batch, maps, strict=True):
        np.testing.assert_array_equal(one, grid_detections(m))
        assert len(one) == np.count_nonzero(m >= 70)


def test_grid_detections_rejects_bad_maps():
    with pytest.raises(ValueError, match="shape"):
        grid_detections(np.zeros((11, 11)))
    bad = np.zeros((33, 33))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        grid_detections(bad)


def random_case(rng, n_frames, adversarial):
    """Frames with 0-5 GT and 0-12 detections; adversarial: grid positions, tied scores,
    duplicated detections and GTs, detections exactly on GTs or on the 1/3 grid."""
    dets, gts = [], []
    for _ in range(n_frames):
        m = rng.integers(0, 6)
        g = np.c_[rng.uniform(0, 10, (m, 2)), rng.uniform(220, 250, m)]
        if adversarial and m >= 2 and rng.random() < 0.3:
            g[1, :2] = g[0, :2]  # duplicated GT
        n = rng.integers(0, 13)
        if adversarial:
            grid = rng.integers(0, 31, (n, 2)) / 3.0
            on_gt = g[rng.integers(0, m, n), :2] if m else grid
            jitter = on_gt + rng.choice([0, 0.05, 0.1, 0.25, -0.25], (n, 2))
            pick = rng.integers(0, 3, n)[:, None]
            pos = np.where(pick == 0, grid, np.where(pick == 1, on_gt, jitter))
            score = rng.integers(70, 74, n).astype(float)  # many ties
            d = np.c_[pos, score]
            if n >= 2 and rng.random() < 0.3:
                d[1] = d[0]  # duplicated detection
        else:
            base = g[rng.integers(0, m, n), :2] if m else rng.uniform(0, 10, (n, 2))
            d = np.c_[base + rng.normal(0, 0.15, (n, 2)), rng.uniform(70, 250, n)]
        dets.append(d)
        gts.append(g)
    return dets, gts


@pytest.mark.parametrize("adversarial", [False, True])
def test_matches_the_literal_reference_to_1e9(adversarial):
    rng = np.random.default_rng(2024 + adversarial)
    for _ in range(60):
        dets, gts = random_case(rng, int(rng.integers(1, 25)), adversarial)
        ours, ref = cso_map(dets, gts), reference_cso_map(dets, gts)
        assert ours.keys() == ref.keys()
        for k in ref:
            assert abs(ours[k] - ref[k]) <= 1e-9, (k, ours[k], ref[k])


def test_chunked_distance_computation_matches_reference(monkeypatch):
    import models.metric as ev

    monkeypatch.setattr(ev, "_CHUNK_ELEMENTS", 7)  # forces many tiny chunks
    dets, gts = random_case(np.random.default_rng(5), 30, adversarial=True)
    ours, ref = cso_map(dets, gts), reference_cso_map(dets, gts)
    assert all(abs(ours[k] - ref[k]) <= 1e-9 for k in ref)


def test_scores_12000_frames_quickly():
    rng = np.random.default_rng(0)
    gts = [np.c_[rng.uniform(0, 10, (3, 2)), np.full(3, 230.0)] for _ in range(12_000)]
    dets = [
        np.c_[g[rng.integers(0, 3, 10), :2] + rng.normal(0, 0.15, (10, 2)), rng.random(10)]
        for g in gts
    ]
    tic = time.perf_counter()
    r = cso_map(dets, gts)
    elapsed = time.perf_counter() - tic
    assert 0 < r["mAP"] < 1
    assert elapsed < 3.0, f"cso_map took {elapsed:.2f} s for 12 000 frames"
