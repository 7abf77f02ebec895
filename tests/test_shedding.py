"""Load shedding in the unmixer: which windows are unmixed, how reused maps move, the costs."""

import numpy as np
import pytest

from sim.render import gt_map
from stages.messages import WindowInfo, Windows
from stages.shedding import WindowShedder, centres_of_light
from stages.unmixer import Unmixer, UnmixerConfig


def test_without_a_measured_cost_every_window_is_unmixed():
    assert WindowShedder(30.0).choose([3, 1, 2]).tolist() == [True, True, True]


def _with_maps(shedder: WindowShedder, ids: list[int]) -> None:
    """Give every window in ``ids`` a fresh map (as after a frame unmixed in full), and
    account the untimed first pass."""
    shedder.record_cost(1.0, 1)
    shedder.complete(ids, np.ones(len(ids), bool), np.zeros((len(ids), 33, 33), np.float32),
                     np.zeros((len(ids), 2)))


def test_the_credit_goes_to_new_tracks_first_then_to_the_oldest_maps():
    shedder = WindowShedder(25.0)
    _with_maps(shedder, [0, 1, 2, 3])
    shedder.record_cost(40.0, 4)  # 10 ms per window; the credit is now -40
    shedder.credit_ms = 0.0
    first = shedder.choose([0, 1, 2, 3, 9])  # credit 25: 2 windows
    assert first.tolist() == [True, False, False, False, True]  # 9 is new; then ties by id
    shedder.complete([0, 1, 2, 3, 9], first, np.zeros((5, 33, 33), np.float32),
                     np.zeros((5, 2)))
    shedder.record_cost(25.0, 2)  # credit 0; cost 10 per pass + 7.5 per window
    assert shedder.choose([0, 1, 2, 3, 9]).tolist() == [False, True, True, False, False]
    assert shedder.summary()["windows_reused"] == 3


def test_a_model_slower_than_the_frame_budget_refreshes_a_window_every_few_frames():
    shedder = WindowShedder(10.0)
    ids = [0, 1, 2]
    _with_maps(shedder, ids)
    shedder.record_cost(75.0, 3)  # 25 ms per window, the credit is -75
    shedder.credit_ms = 0.0
    unmixed = []
    for _ in range(10):
        mask = shedder.choose(ids)
        unmixed.append(int(mask.sum()))
        shedder.complete(ids, mask, np.zeros((3, 33, 33), np.float32), np.zeros((3, 2)))
        shedder.record_cost(25.0 * mask.sum(), int(mask.sum()))
    assert unmixed == [0, 0, 1, 0, 0, 1, 0, 0, 1, 0]  # 10 ms of credit a frame, capped at 25


def test_new_tracks_are_unmixed_even_without_credit():
    shedder = WindowShedder(5.0)
    _with_maps(shedder, [])
    shedder.record_cost(100.0, 2)
    assert shedder.choose([7, 8, 9]).all()


def test_the_cost_model_separates_the_per_pass_cost_from_the_per_window_cost():
    shedder = WindowShedder(40.0)
    shedder.record_cost(5000.0, 3)  # the first pass is not a sample
    assert shedder.cost_ms is None
    for n in (2, 4, 8, 2, 4, 8):
        shedder.record_cost(12.0 + 2.0 * n, n)
    assert shedder.cost_ms == pytest.approx(2.0) and shedder.fixed_ms == pytest.approx(12.0)
    ids = list(range(20))
    shedder.complete(ids, np.ones(20, bool), np.zeros((20, 33, 33), np.float32),
                     np.zeros((20, 2)))
    shedder.credit_ms = 0.0
    assert shedder.choose(ids).sum() == 14  # (40 - 12) / 2


def _window_with_targets(targets: np.ndarray) -> np.ndarray:
    """(5, 11, 11) frames with the targets (n, 3) as single bright pixels in every frame."""
    frames = np.zeros((5, 11, 11), np.float32)
    for r, c, b in targets:
        frames[:, int(round(r)), int(round(c))] = b
    return frames


def test_a_reused_map_moves_with_the_groups_centre_of_light():
    targets = np.array([[5.0, 4.0, 230.0], [5.0, 6.0, 240.0]])
    moved = targets + [1.0, -2.0, 0.0]
    patches = np.stack([_window_with_targets(targets), _window_with_targets(moved)])
    np.testing.assert_allclose(centres_of_light(patches), [[5.0, 5.0], [6.0, 3.0]], atol=0.05)
    shedder = WindowShedder(10.0)
    fresh = gt_map(targets[None])[0].astype(np.float32)
    shedder.complete([4], np.ones(1, bool), fresh[None].copy(), centres_of_light(patches[:1]))
    (predicted,) = shedder.complete([4], np.zeros(1, bool), np.zeros((1, 33, 33), np.float32),
                                    centres_of_light(patches[1:]))
    np.testing.assert_allclose(predicted, gt_map(moved[None])[0], atol=1e-3)


def test_a_track_that_disappears_forgets_its_map():
    shedder = WindowShedder(10.0)
    _with_maps(shedder, [])
    shedder.record_cost(100.0, 1)
    maps, centres = np.zeros((2, 33, 33), np.float32), np.zeros((2, 2))
    shedder.complete([1, 2], np.ones(2, bool), maps, centres)
    shedder.complete([2], np.ones(1, bool), maps[:1], centres[:1])  # track 1 gone
    shedder.credit_ms = -100.0
    assert shedder.choose([1, 2]).tolist() == [True, False]  # 1 is new again


def test_maps_are_kept_per_sensor():
    """Blob ids are per sensor: a frame of sensor 1 neither reuses nor forgets sensor 0's
    maps of the same ids."""
    shedder = WindowShedder(10.0)
    _with_maps(shedder, [])
    shedder.record_cost(100.0, 1)
    maps, centres = np.zeros((2, 33, 33), np.float32), np.zeros((2, 2))
    shedder.complete([1, 2], np.ones(2, bool), maps, centres, sensor=0)
    shedder.credit_ms = -100.0
    assert shedder.choose([1, 2], sensor=1).tolist() == [True, True]  # new for sensor 1
    shedder.complete([5], np.ones(1, bool), maps[:1], centres[:1], sensor=1)
    assert shedder.choose([1, 2], sensor=0).tolist() == [False, False]  # still kept


class _SlowModel:
    """Stands in for a model: maps full of 1s, 20 ms per window on a fake clock."""

    def __init__(self) -> None:
        self.windows = 0
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self

    def __call__(self, windows, frame_index):
        import torch

        self.windows += len(windows)
        self.now += 0.02 * len(windows)
        return torch.ones(len(windows), 1, 33, 33), None


def test_the_stage_keeps_within_its_budget_and_reuses_the_other_maps(monkeypatch):
    model = _SlowModel()
    monkeypatch.setattr("stages.unmixer.time.perf_counter", model.clock)
    stage = Unmixer(UnmixerConfig(frame_budget_ms=25.0, channels_last=False), model=model)
    infos = tuple(WindowInfo(blob_id=i, origin_row=0, origin_col=0, frame_index=2)
                  for i in range(3))
    patches = np.zeros((3, 5, 11, 11), np.float32)
    outs = [stage.process(Windows(seq=s, t_source_ns=0, windows=infos, patches=patches))[0]
            for s in range(9)]
    # all 3 new windows (untimed), all 3 again (no cost yet; credit 50 − 60 = −10), then
    # + 25 ms of credit per frame and − 20 per window: 0, 2, 1, 1, 1, 2, 1 windows
    assert model.windows == 6 + 8
    assert all(np.all(o.maps == 1.0) for o in outs)  # reused maps kept their values
    shed = stage.summary()["shedding"]
    assert shed["windows_unmixed"] == model.windows
    assert shed["windows_unmixed"] + shed["windows_reused"] == 27
