"""Sub-target tracker: confirmation, short misses, deletion, crossing targets, gating."""

import numpy as np
import pytest

from models.config import ConfigError
from stages.association import gated_assignment
from stages.messages import Point, Points, Tracks, Windows
from stages.tracker import PointTracker, Tracker, TrackerConfig


def _pts(*rows) -> np.ndarray:
    return np.array([[r, c, 100.0] for r, c in rows]).reshape(-1, 3)


def test_confirms_after_m_hits():
    tracker = PointTracker(TrackerConfig(confirm_hits=3))
    counts = [len(tracker.step(seq, _pts((10.0, 10.0 + 0.2 * seq)))) for seq in range(4)]
    assert counts == [0, 0, 1, 1]


def test_keeps_its_id_through_a_short_miss_and_is_deleted_after_n_misses():
    tracker = PointTracker(TrackerConfig(confirm_hits=2, max_misses=3))
    ids = []
    for seq in range(12):
        visible = seq not in (5, 6) and seq < 8
        out = tracker.step(seq, _pts((20.0 + 0.3 * seq, 20.0)) if visible else _pts())
        ids.append(out[:, 0].tolist())
    assert ids[1:8] == [[0.0]] * 7  # coasts through seq 5-6 and is picked up again at 7
    assert ids[8:10] == [[0.0], [0.0]]  # misses 1 and 2: still reported
    assert ids[10:] == [[], []]  # third miss: deleted
    out = tracker.step(12, _pts((50.0, 50.0)))
    out = tracker.step(13, _pts((50.0, 50.0)))
    assert out[:, 0].tolist() == [1.0]  # a new target gets a new id


def test_coasting_prediction_follows_the_velocity():
    tracker = PointTracker(TrackerConfig(confirm_hits=2, max_misses=5))
    for seq in range(10):
        tracker.step(seq, _pts((10.0, 10.0 + 0.5 * seq)))
    out = tracker.step(10, _pts())
    assert out[0, 2] == pytest.approx(15.0, abs=0.05) and out[0, 4] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("gating", ["mahalanobis", "euclidean"])
def test_two_crossing_targets_keep_their_ids(gating):
    tracker = PointTracker(TrackerConfig(gating=gating, confirm_hits=2))
    history = {}
    for seq in range(30):
        a = (10.0 + 0.4 * seq, 10.0 + 0.4 * seq)  # diagonal, down-right
        b = (10.0 + 0.4 * seq, 21.6 - 0.4 * seq)  # diagonal, down-left; they cross near seq 14.5
        out = tracker.step(seq, _pts(a, b))
        for tid, _row, c, *_ in out:
            history.setdefault(int(tid), []).append((seq, c))
    assert sorted(history) == [0, 1]
    for track in history.values():
        cols = np.array([c for _, c in track])
        steps = np.diff(cols)
        assert np.all(steps > 0) or np.all(steps < 0), "ids swapped at the crossing"


def test_gate_rejects_a_far_point():
    tracker = PointTracker(TrackerConfig(gating="euclidean", gate_px=1.0, confirm_hits=2))
    for seq in range(3):
        tracker.step(seq, _pts((10.0, 10.0)))
    out = tracker.step(3, _pts((12.0, 10.0)))  # 2 px away: not this track
    assert out[:, 0].tolist() == [0.0] and out[0, 1] == pytest.approx(10.0, abs=1e-6)


def test_gated_assignment_prefers_more_pairs_then_lower_cost():
    cost = np.array([[0.1, 0.5], [0.2, 9.0]])
    pairs, rows, cols = gated_assignment(cost, gate=1.0)
    assert pairs.tolist() == [[0, 1], [1, 0]] and rows.size == 0 and cols.size == 0
    pairs, rows, cols = gated_assignment(np.array([[5.0], [0.4]]), gate=1.0)
    assert pairs.tolist() == [[1, 0]] and rows.tolist() == [0] and cols.size == 0
    pairs, rows, cols = gated_assignment(np.zeros((0, 3)), gate=1.0)
    assert pairs.shape == (0, 2) and cols.tolist() == [0, 1, 2]


def test_stage_emits_tracks_for_every_frame():
    stage = Tracker(TrackerConfig(confirm_hits=2))
    outs = []
    for seq in range(3):
        msg = Points(seq=seq, t_source_ns=seq * 40, points=(Point(row=5.0, col=5.0 + seq,
                                                                  score=80.0, window_id=0),))
        outs += list(stage.process(msg))
    assert [type(o) for o in outs] == [Tracks] * 3
    assert [len(o.tracks) for o in outs] == [0, 1, 1]
    track = outs[2].tracks[0]
    assert (track.track_id, track.age, outs[2].t_source_ns) == (0, 2, 80)
    assert track.col == pytest.approx(7.0, abs=0.1) and track.score == pytest.approx(80.0)
    with pytest.raises(ConfigError, match="Points"):
        stage.process(Windows(seq=4, t_source_ns=0, windows=(),
                              patches=np.zeros((0, 5, 11, 11), np.float32)))


def test_seq_must_increase_and_config_is_checked():
    tracker = PointTracker()
    tracker.step(3, _pts())
    with pytest.raises(ValueError, match="increase"):
        tracker.step(3, _pts())
    with pytest.raises(ValueError, match="gating"):
        TrackerConfig(gating="iou")
