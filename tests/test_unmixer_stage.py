"""Unmixer and extractor stages: one batched forward per frame, exact patch → frame mapping."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from models.config import ConfigError
from sim.render import gt_map, render
from stages.extractor import Extractor, to_frame_points
from stages.messages import Maps, Point, Points, WindowInfo, Windows
from stages.unmixer import Unmixer, UnmixerConfig


class CountingModel(nn.Module):
    """Fake unmixer: the map is the middle frame upsampled 3×; counts forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, list[int]]] = []

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        self.calls.append((windows.shape[0], frame_index.tolist()))
        middle = windows[:, 2]
        return middle.repeat_interleave(3, dim=1).repeat_interleave(3, dim=2), {}


def _windows(n: int, seq: int = 5) -> Windows:
    rng = np.random.default_rng(n)
    infos = tuple(
        WindowInfo(blob_id=10 + i, origin_row=3 * i, origin_col=7 + i, frame_index=2 + i)
        for i in range(n)
    )
    patches = rng.uniform(0, 255, (n, 5, 11, 11)).astype(np.float32)
    return Windows(seq=seq, t_source_ns=99, windows=infos, patches=patches)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_all_windows_of_a_frame_go_through_one_forward(restore_threads):
    model = CountingModel()
    stage = Unmixer(UnmixerConfig(threads=1), model=model)
    stage.start()
    assert torch.get_num_threads() == 1
    assert model.calls == [(1, [2])]  # the warm-up call, before the first frame
    model.calls.clear()
    msg = _windows(4)
    (out,) = stage.process(msg)
    assert model.calls == [(4, [2, 3, 4, 5])]
    assert isinstance(out, Maps) and (out.seq, out.t_source_ns) == (5, 99)
    assert out.maps.shape == (4, 33, 33) and out.maps.dtype == np.float32
    np.testing.assert_array_equal(out.maps[1, 3:6, 6:9], np.full((3, 3), msg.patches[1, 2, 1, 2]))
    assert out.windows == msg.windows
    np.testing.assert_array_equal(out.patches, msg.patches)


def test_a_frame_without_windows_skips_the_model():
    model = CountingModel()
    (out,) = Unmixer(model=model).process(_windows(0))
    assert model.calls == [] and out.maps.shape == (0, 33, 33)


def test_a_registered_model_loads_and_runs(restore_threads):
    stage = Unmixer(UnmixerConfig(model="ista", threads=1))
    stage.start()
    (out,) = stage.process(_windows(2))
    assert out.maps.shape == (2, 33, 33) and np.all(np.isfinite(out.maps))


def _track_messages(n_frames: int, tracks: int = 2):
    """One Windows message per middle frame for ``tracks`` tracks sliding over n_frames
    frames: consecutive windows share 4 frames, as the cropper emits them."""
    rng = np.random.default_rng(3)
    frames = rng.uniform(0, 60, (tracks, n_frames, 11, 11)).astype(np.float32)
    for t in range(2, n_frames - 2):
        infos = tuple(WindowInfo(blob_id=k, origin_row=0, origin_col=0, frame_index=t)
                      for k in range(tracks))
        yield Windows(seq=t, t_source_ns=t, windows=infos, patches=frames[:, t - 2:t + 3])


def test_frame_feature_cache_gives_the_maps_of_a_full_forward(restore_threads):
    """DeRefNet with the cache (and channels-last): each frame unfolded once, maps as a
    plain forward's."""
    import copy

    from models.registry import get_model

    torch.manual_seed(0)
    model = get_model("derefnet", layers=2, res_blocks=1).eval()
    plain = Unmixer(UnmixerConfig(threads=1, feature_cache=0, channels_last=False),
                    model=copy.deepcopy(model))
    cached = Unmixer(UnmixerConfig(threads=1), model=model)
    cached.start()
    plain.start()
    n_frames, tracks = 12, 2
    for msg in _track_messages(n_frames, tracks):
        (a,) = cached.process(msg)
        (b,) = plain.process(msg)
        np.testing.assert_allclose(a.maps, b.maps, rtol=1e-4, atol=1e-3)
    windows = tracks * (n_frames - 4)
    assert cached.summary() == {"feature_cache": {"misses": tracks * n_frames,
                                                  "hits": 5 * windows - tracks * n_frames}}
    assert plain.summary() is None


def test_frame_feature_cache_is_bounded(restore_threads):
    from models.registry import get_model

    model = get_model("derefnet", layers=1, res_blocks=1).eval()
    stage = Unmixer(UnmixerConfig(threads=1, feature_cache=7), model=model)
    for msg in _track_messages(10, tracks=3):
        stage.process(msg)
        assert len(stage._features) <= 7
    assert stage.summary()["feature_cache"]["misses"] > 3 * 10  # evicted frames came back


def test_unmixer_rejects_other_messages():
    with pytest.raises(ConfigError, match="Windows"):
        Unmixer(model=CountingModel()).process(Points(seq=0, t_source_ns=0))


def test_extractor_maps_patch_points_to_frame_points_exactly():
    def fake_extract(maps, windows, config, saturation):
        assert maps.shape == (2, 33, 33) and windows.shape == (2, 5, 11, 11)
        np.testing.assert_array_equal(saturation, [255.0 - 12.0, 65535.0])
        return [np.array([[4.25, 5.0, 90.0], [0.0, 10.0, 75.5]]), np.zeros((0, 3))]

    msg = _windows(2)
    infos = (replace(msg.windows[0], background=12.0), replace(msg.windows[1], saturation=65535.0))
    maps = Maps(seq=msg.seq, t_source_ns=msg.t_source_ns, windows=infos,
                patches=msg.patches, maps=np.zeros((2, 33, 33), np.float32))
    (out,) = Extractor(extract=fake_extract).process(maps)
    assert isinstance(out, Points) and out.seq == 5
    assert out.points == (
        Point(row=0 + 4.25, col=7 + 5.0, score=90.0, window_id=0),
        Point(row=0 + 0.0, col=7 + 10.0, score=75.5, window_id=0),
    )


def test_extractor_checks_the_number_of_point_sets():
    with pytest.raises(ValueError, match="2 point sets for 1 windows"):
        to_frame_points([np.zeros((0, 3)), np.zeros((0, 3))], _windows(1).windows)


def test_extractor_on_an_empty_frame_does_not_call_extract():
    def must_not_run(maps, windows, config):
        raise AssertionError("extract called without windows")

    msg = _windows(0)
    maps = Maps(seq=1, t_source_ns=0, windows=(), patches=msg.patches,
                maps=np.zeros((0, 33, 33), np.float32))
    (out,) = Extractor(extract=must_not_run).process(maps)
    assert out.points == ()


def test_extractor_with_the_shared_extract_points_finds_a_rendered_pair():
    targets = np.array([[[5.2, 2.1, 235.0], [5.5, 2.4, 230.0]]])
    maps = gt_map(targets).reshape(1, 33, 33).astype(np.float32)
    patches = np.repeat(render(targets)[:, None], 5, axis=1).astype(np.float32)
    info = (WindowInfo(blob_id=7, origin_row=100, origin_col=-3, frame_index=2),)
    msg = Maps(seq=0, t_source_ns=0, windows=info, patches=patches, maps=maps)
    (out,) = Extractor().process(msg)
    found = sorted((p.row, p.col) for p in out.points)
    np.testing.assert_allclose(found, [[105.2, -0.9], [105.5, -0.6]], atol=0.05)
    assert {p.window_id for p in out.points} == {0}


def _read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False  # as the codec decodes arrays from the wire
    return array


def test_stages_take_read_only_arrays_as_decoded_from_the_wire(restore_threads):
    msg = _windows(2)
    windows = Windows(seq=5, t_source_ns=0, windows=msg.windows, patches=_read_only(msg.patches))
    (maps,) = Unmixer(model=CountingModel()).process(windows)  # torch would warn: an error
    frozen = Maps(seq=5, t_source_ns=0, windows=maps.windows, patches=_read_only(maps.patches),
                  maps=_read_only(maps.maps))
    (points,) = Extractor().process(frozen)  # the real (numpy) extractor
    assert points.seq == 5 and not frozen.maps.flags.writeable


def test_the_unmixer_applies_its_thread_count_and_the_extractor_leaves_it(restore_threads):
    unmixer = Unmixer(UnmixerConfig(threads=2), model=CountingModel())
    unmixer.start()
    extractor = Extractor(extract=lambda maps, *_: [np.zeros((0, 3))] * len(maps))
    for _ in range(2):  # one process, both stages
        torch.set_num_threads(1)
        (maps,) = unmixer.process(_windows(1))
        assert torch.get_num_threads() == 2
        extractor.process(maps)
        assert torch.get_num_threads() == 2  # numpy fits: no torch threads of its own
