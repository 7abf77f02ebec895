"""Cropper: blob-track ids, one origin per window, border padding, birth/deletion, joins."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ConfigError
from sim.background_level import ring_levels
from stages.base import SeqJoin
from stages.cropper import (
    Cropper,
    CropperConfig,
    WindowCropper,
    centre_at,
    crop,
)
from stages.detector import Detector
from stages.messages import Blob, Blobs, Frame, Points, TruthPoint, Windows
from stages.scene import SceneConfig, SceneSimulator

SHAPE = (64, 80)


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 100, SHAPE).astype(np.float32) for _ in range(n)]


def _blob(row: float, col: float) -> Blob:
    return Blob(row=row, col=col, peak=100.0, area=9, snr=50.0)


def test_ids_stay_stable_over_a_moving_group():
    scene = SceneSimulator(SceneConfig(groups=2, speed=(0.5, 0.5)), seed=1)
    detector, cropper = Detector(), Cropper()
    references = {}
    ids_per_group: dict[int, set[int]] = {}
    for seq in range(40):
        image, truth = scene.step()
        references[seq] = truth.references
        frame = Frame(seq=seq, t_source_ns=seq, image=image)
        cropper.process(frame)
        (blobs,) = detector.process(frame)
        for out in cropper.process(blobs):
            for info in out.windows:
                centre = np.array([info.origin_row + 5, info.origin_col + 5])
                group = int(np.argmin(np.linalg.norm(references[out.seq] - centre, axis=1)))
                ids_per_group.setdefault(group, set()).add(info.blob_id)
    assert len(ids_per_group) == 2
    assert all(len(ids) == 1 for ids in ids_per_group.values())
    assert cropper.cores[0].blob_ids == sorted({i for ids in ids_per_group.values() for i in ids})


def test_five_patches_share_one_origin_and_equal_the_frames_crops():
    frames = _frames(7)
    core = WindowCropper()
    path = [(20.0 + 0.4 * k, 30.0 + 0.3 * k) for k in range(7)]
    for seq, (image, pos) in enumerate(zip(frames, path, strict=True)):
        windows = core.update(seq, image, np.array([pos]))
    (w,) = windows  # middle frame 4
    assert w.seq == 4 and w.observed and not w.padded
    r0, c0 = w.origin
    assert (r0, c0) == (int(np.rint(path[4][0])) - 5, int(np.rint(path[4][1])) - 5)
    level = np.float32(w.background)
    stack = np.stack([f[r0 : r0 + 11, c0 : c0 + 11] for f in frames[2:]])
    assert level == ring_levels(stack[None])[0]
    for k in range(5):
        expected = frames[2 + k][r0 : r0 + 11, c0 : c0 + 11] - level
        np.testing.assert_array_equal(w.patches[k], expected)


def test_border_patches_are_padded_with_the_median_and_flagged():
    frames = _frames(5)
    core = WindowCropper(CropperConfig(subtract_background=False))
    for seq, image in enumerate(frames):
        windows = core.update(seq, image, np.array([[2.2, 77.6]]))
    (w,) = windows
    assert w.padded and w.origin == (-3, 73)
    for k in range(5):
        fill = np.median(frames[k][::2, ::2])
        assert np.all(w.patches[k][:3] == np.float32(fill))  # rows -3..-1
        assert np.all(w.patches[k][:, 7:] == np.float32(fill))  # cols 80..83
        np.testing.assert_array_equal(w.patches[k][3:, :7], frames[k][0:8, 73:80])


def test_background_is_subtracted_from_a_simulated_window():
    scene = SceneSimulator(SceneConfig(groups=1, background=20.0, gradient=0.0), seed=2)
    raw, flat = WindowCropper(CropperConfig(subtract_background=False)), WindowCropper()
    for seq in range(5):
        image, truth = scene.step()
        raw_out, flat_out = (c.update(seq, image, truth.references) for c in (raw, flat))
    (w_raw,), (w_flat,) = raw_out, flat_out
    assert w_raw.background == 0.0 and w_flat.background == pytest.approx(20.0, abs=1.0)
    assert abs(float(np.median(w_flat.patches[:, 0, :]))) <= 1.0
    np.testing.assert_array_equal(w_flat.patches, w_raw.patches - np.float32(w_flat.background))


def test_crop_outside_the_image_is_all_fill():
    assert np.all(crop(np.ones((4, 4)), (10, 10), 3, fill=7.0) == 7.0)


def test_stream_edges_repeat_the_first_and_last_frames():
    core = WindowCropper(CropperConfig(subtract_background=False))
    frames = _frames(6)
    out = [core.update(seq, frames[seq], np.array([[30.0, 40.0]])) for seq in range(6)]
    assert [[w.seq for w in ws] for ws in out] == [[], [], [0], [1], [2], [3]]
    (first,) = out[2]
    r0, c0 = first.origin
    for k, source in enumerate([0, 0, 0, 1, 2]):
        np.testing.assert_array_equal(first.patches[k], frames[source][r0:r0 + 11, c0:c0 + 11])
    ends = core.finish()
    assert [(seq, [w.seq for w in ws]) for seq, ws in ends] == [(4, [4]), (5, [5])]
    last = ends[1][1][0]
    for k, source in enumerate([3, 4, 5, 5, 5]):
        np.testing.assert_array_equal(last.patches[k], frames[source][r0:r0 + 11, c0:c0 + 11])
    assert core.finish() == []


def test_finish_skips_frames_lost_before_the_end():
    core = WindowCropper()
    image = np.zeros(SHAPE, np.float32)
    for seq in (0, 1, 2, 3, 5):  # frame 4 lost
        core.update(seq, image, [[30.0, 40.0]])
    assert core.finish() == [(5, [])]  # no 5 consecutive frames around 5, and 4 is gone


def test_a_track_born_mid_stream_gets_a_window_from_its_first_frame():
    core = WindowCropper(CropperConfig(subtract_background=False))
    frames = _frames(12)
    windows = {}
    for seq in range(12):
        blobs = np.array([[30.0, 40.0]] if seq >= 6 else np.zeros((0, 2)))
        for w in core.update(seq, frames[seq], blobs):
            windows[w.seq] = w
    assert sorted(windows) == [6, 7, 8, 9]
    assert [windows[t].frame_index for t in (6, 7, 8, 9)] == [2, 2, 2, 3]
    r0, c0 = windows[6].origin
    for k in range(5):  # frames 4 and 5 precede the track's birth but are real frames
        np.testing.assert_array_equal(windows[6].patches[k], frames[4 + k][r0:r0 + 11, c0:c0 + 11])


def test_time_index_is_clamped_at_seventeen():
    core = WindowCropper(CropperConfig(max_frame_index=17))
    image = np.zeros(SHAPE, np.float32)
    indices = [w.frame_index for seq in range(30) for w in core.update(seq, image, [[30, 40]])]
    assert indices[:18] == [2, 2, *range(2, 18)] and set(indices[18:]) == {17}


def test_track_is_deleted_after_max_misses_and_a_new_blob_gets_a_new_id():
    core = WindowCropper(CropperConfig(max_misses=3))
    image = np.zeros(SHAPE, np.float32)
    for seq in range(5):
        core.update(seq, image, [[30.0, 40.0]])
    assert core.blob_ids == [0]
    core.update(5, image, np.zeros((0, 2)))
    core.update(6, image, np.zeros((0, 2)))
    assert core.blob_ids == [0]  # two misses: still alive
    core.update(7, image, np.zeros((0, 2)))
    assert core.blob_ids == []  # third miss: deleted
    core.update(8, image, [[30.0, 40.0]])
    assert core.blob_ids == [1]


def test_short_miss_keeps_the_id_and_interpolates_the_middle_frame():
    core = WindowCropper()
    image = np.zeros(SHAPE, np.float32)
    seen = {}
    for seq in range(9):
        blobs = np.zeros((0, 2)) if seq == 4 else np.array([[30.0, 40.0 + seq]])
        for w in core.update(seq, image, blobs):
            seen[w.seq] = w
    assert {w.blob_id for w in seen.values()} == {0}
    assert not seen[4].observed and seen[4].centre == pytest.approx((30.0, 44.0))
    assert seen[5].observed


def test_centre_at_needs_detections_on_both_sides():
    history = [(0, 1.0, 1.0, True), (1, 2.0, 2.0, False)]
    assert centre_at(history, 1) is None
    assert centre_at(history, 0) == ((1.0, 1.0), True)


def test_gate_separates_two_blobs():
    core = WindowCropper(CropperConfig(gate_px=2.0))
    image = np.zeros(SHAPE, np.float32)
    core.update(0, image, [[10.0, 10.0], [40.0, 60.0]])
    core.update(1, image, [[40.5, 60.5], [10.5, 10.5]])
    assert core.blob_ids == [0, 1]
    core.update(2, image, [[20.0, 20.0]])  # far from both: a new track
    assert 2 in core.blob_ids


def test_stage_joins_frames_and_blobs_in_any_order_and_attaches_truth():
    stage = Cropper()
    frames = _frames(6, seed=3)
    truth = (TruthPoint(group=0, row=30.1, col=40.2, brightness=230.0),
             TruthPoint(group=1, row=5.0, col=5.0, brightness=230.0))
    outs = []
    for seq, image in enumerate(frames):
        frame = Frame(seq=seq, t_source_ns=10 * seq, image=image, truth=truth)
        blobs = Blobs(seq=seq, t_source_ns=10 * seq, blobs=(_blob(30.0, 40.0),))
        first, second = (frame, blobs) if seq % 2 else (blobs, frame)
        assert list(stage.process(first)) == []
        outs += list(stage.process(second))
    outs += list(stage.flush())
    assert [o.seq for o in outs] == [0, 1, 2, 3, 4, 5]  # 4 and 5 at the end of the stream
    assert all(isinstance(o, Windows) for o in outs)
    assert [len(o.windows) for o in outs] == [1] * 6 and list(stage.flush()) == []
    info = outs[2].windows[0]
    assert (info.origin_row, info.origin_col, info.frame_index) == (25, 35, 2)
    assert info.truth == truth[:1] and outs[2].t_source_ns == 20
    level = ring_levels(np.stack([f[25:36, 35:46] for f in frames[:5]])[None])[0]
    np.testing.assert_array_equal(outs[2].patches[0, 4], frames[4][25:36, 35:46] - level)
    assert info.background == pytest.approx(level)  # raw = patch + background


def test_seq_join_drops_incomplete_older_seqs():
    join = SeqJoin((Frame, Blobs), max_pending=2)
    image = np.zeros((2, 2), np.float32)
    assert join.add(Frame(seq=0, t_source_ns=0, image=image)) is None
    assert join.add(Frame(seq=1, t_source_ns=0, image=image)) is None
    parts = join.add(Blobs(seq=1, t_source_ns=0))
    assert set(parts) == {Frame, Blobs} and join.dropped == 1
    for seq in range(2, 6):
        join.add(Frame(seq=seq, t_source_ns=0, image=image))
    assert join.dropped == 3  # only max_pending = 2 incomplete seqs are kept
    with pytest.raises(ConfigError, match="Points"):
        join.add(Points(seq=9, t_source_ns=0))


@settings(max_examples=25, deadline=None)
@given(
    start=st.tuples(st.floats(-3.0, 66.0), st.floats(-3.0, 82.0)),
    step=st.tuples(st.floats(-0.6, 0.6), st.floats(-0.6, 0.6)),
    missed=st.sets(st.integers(0, 11), max_size=3),
)
def test_every_window_is_five_crops_at_one_origin(start, step, missed):
    frames = _frames(12, seed=7)
    core = WindowCropper()
    for seq, image in enumerate(frames):
        pos = np.array(start) + seq * np.array(step)
        blobs = np.zeros((0, 2)) if seq in missed else pos[None]
        for w in core.update(seq, image, blobs):
            assert w.origin == tuple(int(np.rint(v)) - 5 for v in w.centre)
            assert 2 <= w.frame_index <= 17 and w.patches.shape == (5, 11, 11)
            for k in range(5):
                raw = frames[max(w.seq - 2 + k, 0)]
                fill = np.float32(np.median(raw[::2, ::2]))
                expected = crop(raw, w.origin, 11, fill) - np.float32(w.background)
                np.testing.assert_array_equal(w.patches[k], expected)


def test_stage_reports_frames_dropped_by_the_join():
    stage = Cropper(CropperConfig(max_pending=2))
    image = np.zeros(SHAPE, np.float32)
    for seq in range(4):
        stage.process(Frame(seq=seq, t_source_ns=0, image=image))
    assert stage.summary() == {"join_dropped": 2}  # frames 0 and 1: over max_pending
    stage.process(Blobs(seq=3, t_source_ns=0))
    assert stage.summary() == {"join_dropped": 3}  # frame 2 can no longer be completed


@pytest.mark.parametrize("dtype, configured, expected", [
    (np.uint8, None, 255.0), (np.uint16, None, 65535.0), (np.float32, None, np.inf),
    (np.float32, 4000.0, 4000.0),
])
def test_windows_carry_the_frames_saturation_level(dtype, configured, expected):
    cropper = Cropper(CropperConfig(saturation=configured))
    image = np.full(SHAPE, 10, dtype)
    image[30:33, 40:43] = 200
    outs = []
    for seq in range(5):
        cropper.process(Frame(seq=seq, t_source_ns=seq, image=image))
        outs += cropper.process(Blobs(seq=seq, t_source_ns=seq, blobs=(_blob(31.0, 41.0),)))
    (info,) = outs[-1].windows
    assert info.saturation == expected
