"""Scoring: GOSPA hand cases, group detection by window, CSO-mAP over detected groups."""

import json

import numpy as np
import pytest

from stages.messages import (
    Blob,
    Blobs,
    Frame,
    Point,
    Points,
    Track,
    Tracks,
    TruthPoint,
    WindowInfo,
    Windows,
)
from stages.scoring import (
    ScoreAccumulator,
    Scoring,
    ScoringConfig,
    detected_groups,
    gospa,
    gospa_pairs,
    group_references,
    target_keys,
)


def test_gospa_perfect_is_zero():
    x = np.array([[1.0, 2.0], [5.0, 5.0]])
    terms = gospa(x, x[::-1].copy(), c=2.0, p=1.0)
    assert terms.distance == 0.0 and terms.assigned == 2
    assert terms.localisation == terms.missed == terms.false == 0.0


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_gospa_one_missed_target_costs_half_c_to_the_p(p):
    terms = gospa(np.array([[0.0, 0.0], [9.0, 9.0]]), np.array([[9.0, 9.0]]), c=2.0, p=p)
    assert terms.missed == pytest.approx(2.0**p / 2) and terms.false == 0.0
    assert terms.distance == pytest.approx((2.0**p / 2) ** (1 / p))


def test_gospa_localisation_error_and_cut_off():
    terms = gospa(np.array([[0.0, 0.0]]), np.array([[0.3, 0.4]]), c=2.0, p=2.0)
    assert terms.localisation == pytest.approx(0.25) and terms.distance == pytest.approx(0.5)
    far = gospa(np.array([[0.0, 0.0]]), np.array([[3.0, 0.0]]), c=2.0, p=1.0)
    assert (far.assigned, far.missed, far.false, far.distance) == (0, 1.0, 1.0, 2.0)


def test_gospa_of_empty_sets():
    assert gospa(np.zeros((0, 2)), np.zeros((0, 2))).distance == 0.0
    assert gospa(np.zeros((0, 2)), np.array([[1.0, 1.0]]), c=4.0).false == 2.0


def test_gospa_picks_the_optimal_assignment():
    # Greedy nearest pairing would take (0,0)-(0,0.9) and leave (0,1.8) to (0,-0.5): 0.9+2.3.
    truth = np.array([[0.0, 0.0], [0.0, 1.8]])
    est = np.array([[0.0, 0.9], [0.0, -0.5]])
    assert gospa(truth, est, c=5.0, p=1.0).localisation == pytest.approx(0.5 + 0.9)


def _truth() -> tuple[TruthPoint, ...]:
    # group 0 near (20, 30); group 1 near (60, 60)
    return (
        TruthPoint(group=0, row=19.7, col=30.0, brightness=230.0),
        TruthPoint(group=0, row=20.3, col=30.0, brightness=240.0),
        TruthPoint(group=1, row=60.0, col=59.7, brightness=225.0),
        TruthPoint(group=1, row=60.0, col=60.3, brightness=235.0),
    )


def test_a_group_is_detected_when_its_reference_is_inside_a_window():
    refs = group_references(_truth())
    np.testing.assert_allclose(refs[0], [20.0, 30.0])
    windows = (
        WindowInfo(blob_id=4, origin_row=15, origin_col=25, frame_index=2),  # holds group 0
        WindowInfo(blob_id=5, origin_row=49, origin_col=49, frame_index=2),  # 60.0 > 59.5: no
    )
    assert detected_groups(refs, windows) == {0: 0}  # window index 0 (blob 4)
    nearer = WindowInfo(blob_id=6, origin_row=14, origin_col=25, frame_index=2)
    assert detected_groups(refs, (nearer, windows[0])) == {0: 1}  # the nearer crop centre


def test_accumulator_scores_only_detected_groups_in_cso_map_but_all_targets_in_gospa():
    scores = ScoreAccumulator(c=2.0, p=1.0)
    windows = (WindowInfo(blob_id=4, origin_row=15, origin_col=25, frame_index=2),)
    points = (
        Point(row=19.7, col=30.0, score=200.0, window_id=0),
        Point(row=20.3, col=30.0, score=190.0, window_id=0),
        Point(row=80.0, col=80.0, score=100.0, window_id=9),  # a false window: GOSPA only
    )
    terms = scores.add(_truth(), windows, points, ())
    assert terms.missed == pytest.approx(2 * 1.0) and terms.false == pytest.approx(1.0)
    summary = scores.summary()
    assert summary["groups"] == 2 and summary["groups_detected"] == 1
    assert summary["group_detection_rate"] == 0.5
    assert summary["cso_map"]["mAP"] == pytest.approx(1.0)
    assert (summary["cso_map"]["mode"], summary["cso_map"]["level"]) == ("points", "frame")
    assert summary["gospa"]["distance"] == pytest.approx(3.0)
    assert summary["tracking"]["gospa"]["missed"] == pytest.approx(4.0)  # no track at all
    assert (summary["frames"], summary["windows"], summary["points"]) == (1, 1, 3)


def test_end_to_end_map_counts_undetected_groups_and_lost_frames_as_missed():
    scores = ScoreAccumulator(c=2.0, p=1.0)
    windows = (WindowInfo(blob_id=4, origin_row=15, origin_col=25, frame_index=2),)
    exact = tuple(Point(row=q.row, col=q.col, score=q.brightness, window_id=0)
                  for q in _truth() if q.group == 0)
    scores.add(_truth(), windows, exact, ())  # group 1 not detected
    half = scores.summary()
    assert half["cso_map"]["mAP"] == pytest.approx(1.0)
    assert half["cso_map_end_to_end"]["mAP"] == pytest.approx(0.5)  # 2 of 4 targets found
    scores.add_lost(_truth())
    lost = scores.summary()
    assert lost["frames_lost"] == 1 and lost["cso_map_end_to_end"]["frames"] == 2
    assert lost["cso_map_end_to_end"]["mAP"] == pytest.approx(0.25)  # 2 of 8 targets found
    assert lost["cso_map"] == half["cso_map"]  # the detected-groups figure ignores lost frames


def test_stage_joins_by_seq_and_writes_its_summary(tmp_path):
    out = tmp_path / "scores.json"
    stage = Scoring(ScoringConfig(output=str(out)))
    image = np.zeros((100, 100), np.float32)
    windows = (WindowInfo(blob_id=4, origin_row=15, origin_col=25, frame_index=2),)
    for seq in range(3):
        stage.process(Frame(seq=seq, t_source_ns=0, image=image, truth=_truth()))
    found = (Blob(row=20.1, col=30.0, peak=90.0, area=6, snr=40.0),  # group 0
             Blob(row=80.0, col=10.0, peak=30.0, area=3, snr=12.0))  # a false alarm
    for seq in (1, 2):  # frame 0 never gets results and is dropped
        stage.process(Blobs(seq=seq, t_source_ns=0, blobs=found))
        stage.process(Windows(seq=seq, t_source_ns=0, windows=windows,
                              patches=np.zeros((1, 5, 11, 11), np.float32)))
        pts = (Point(row=20.2, col=30.0, score=150.0, window_id=0),)
        stage.process(Points(seq=seq, t_source_ns=0, points=pts))
        stage.process(Tracks(seq=seq, t_source_ns=0, tracks=(_track(0, 20.3, 30.0),)))
    stage.flush()
    summary = json.loads(out.read_text())
    assert summary["frames"] == 2 and summary["groups_detected"] == 2
    assert summary["frames_lost"] == 1  # frame 0: its truth came, its points never did
    assert 0 < summary["cso_map"]["mAP"] < 1
    assert summary["tracking"]["tracks"] == 2 and summary["tracking"]["id_switches"] == 0
    detection = summary["detection"]  # group 1 missed in both frames, 3 false pixels each
    assert (detection["groups"], detection["detected"], detection["Pd"]) == (4, 2, 0.5)
    assert detection["Fa"] == 6 / 20000 and detection["IoU"] is None
    assert summary == json.loads(json.dumps(stage.summary()))


def test_the_map_pools_a_bounded_window_and_gospa_is_a_running_mean():
    scores = ScoreAccumulator(c=2.0, p=1.0, map_window=2)
    windows = (WindowInfo(blob_id=4, origin_row=15, origin_col=25, frame_index=2),)
    far = (Point(row=18.7, col=30.0, score=300.0, window_id=0),  # 1 px off: misses
           Point(row=21.3, col=30.0, score=290.0, window_id=0))
    near = (Point(row=19.7, col=30.0, score=200.0, window_id=0),  # on target: mAP 1 alone
            Point(row=20.3, col=30.0, score=190.0, window_id=0))
    distances = [scores.add(_truth(), windows, far, ()).distance]
    for _ in range(2):  # the two frames the window keeps
        distances.append(scores.add(_truth(), windows, near, ()).distance)
    summary = scores.summary()
    assert summary["frames"] == 3 and summary["cso_map"]["frames"] == 2
    alone = ScoreAccumulator(c=2.0, p=1.0)
    for _ in range(2):
        alone.add(_truth(), windows, near, ())
    assert summary["cso_map"]["mAP"] == alone.summary()["cso_map"]["mAP"] == pytest.approx(1.0)
    everything = ScoreAccumulator(c=2.0, p=1.0, map_window=3)
    for points in (far, near, near):
        everything.add(_truth(), windows, points, ())
    assert everything.summary()["cso_map"]["mAP"] < 0.5  # with the far frame in the pool
    assert summary["gospa"]["distance"] == pytest.approx(np.mean(distances))  # all 3 frames


def test_summary_of_no_frames_is_valid_json():
    summary = ScoreAccumulator().summary()
    assert summary["frames"] == 0 and summary["group_detection_rate"] is None
    assert summary["gospa"]["distance"] is None
    assert summary["tracking"]["gospa"]["distance"] is None
    json.loads(json.dumps(summary, allow_nan=False))


def _track(track_id: int, row: float, col: float) -> Track:
    return Track(track_id=track_id, row=row, col=col, vrow=0.0, vcol=0.0, score=1.0, age=3)


def test_gospa_pairs_are_the_assigned_pairs_within_c():
    truth = np.array([[0.0, 0.0], [10.0, 10.0]])
    est = np.array([[10.2, 10.0], [50.0, 50.0], [0.0, 0.1]])
    terms, pairs = gospa_pairs(truth, est, c=2.0, p=1.0)
    assert pairs.tolist() == [[0, 2], [1, 0]] and terms.assigned == 2


def test_target_keys_rank_sub_targets_within_their_group():
    assert target_keys(_truth()) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_tracking_score_counts_identity_switches_and_splits_gospa():
    scores = ScoreAccumulator(c=2.0, p=1.0)
    truth = _truth()
    a, b = (truth[0].row, truth[0].col), (truth[1].row, truth[1].col)
    scores.add(truth, (), (), (_track(0, *a), _track(1, *b)))
    scores.add(truth, (), (), (_track(0, *a), _track(1, *b)))
    scores.add(truth, (), (), (_track(1, *a), _track(0, *b)))  # the two ids swap: 2 switches
    scores.add(truth, (), (), (_track(1, *a),))  # target (0, 1) unpaired: no switch, missed
    scores.add(truth, (), (), (_track(1, *a), _track(0, *b)))  # (0, 1) back on 0: none
    tracking = scores.summary()["tracking"]
    assert tracking["id_switches"] == 2 and tracking["tracks"] == 9
    # group 1 (2 targets) is never tracked; frame 4 also misses one target of group 0
    assert tracking["gospa"]["missed"] == pytest.approx((4 * 2 + 3) / 5)
    assert tracking["gospa"]["false"] == 0.0 and tracking["gospa"]["localisation"] == 0.0


def test_stage_scores_tracks_of_the_same_seq():
    stage = Scoring()
    image = np.zeros((100, 100), np.float32)
    stage.process(Frame(seq=5, t_source_ns=0, image=image, truth=_truth()))
    stage.process(Blobs(seq=5, t_source_ns=0, blobs=()))
    stage.process(Windows(seq=5, t_source_ns=0, windows=(),
                          patches=np.zeros((0, 5, 11, 11), np.float32)))
    stage.process(Points(seq=5, t_source_ns=0, points=()))
    assert stage.summary()["frames"] == 0  # still waiting for the tracks of frame 5
    stage.process(Tracks(seq=5, t_source_ns=0, tracks=(_track(3, 60.0, 59.7),)))
    tracking = stage.summary()["tracking"]
    assert stage.summary()["frames"] == 1 and tracking["gospa"]["missed"] == pytest.approx(3.0)
