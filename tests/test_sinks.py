"""Sinks: console lines, JSON lines (valid, deterministic), overlay PNG/video of the right size."""

import io
import json

import cv2
import numpy as np

from pipeline.wire.codec import WireMessage, encode, peek
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
from stages.overlay import CAPTION, GAP, HEADER, draw_overlay, label_groups, stretch_to_uint8
from stages.sinks import (
    ConsoleConfig,
    ConsoleSummary,
    JsonLinesConfig,
    JsonLinesWriter,
    OverlayConfig,
    OverlayWriter,
)

SHAPE = (40, 50)


def _messages(seq: int, stamp: int | None = None):
    stamps = {"tracker.out": stamp} if stamp is not None else {}
    image = np.full(SHAPE, 20.0, np.float32)
    image[10:13, 20:23] = 200.0
    info = WindowInfo(blob_id=3, origin_row=6, origin_col=16, frame_index=2)
    truth = (TruthPoint(group=0, row=11.0, col=21.4, brightness=230.0),)
    return [
        Frame(seq=seq, t_source_ns=seq * 40, image=image, truth=truth),
        Blobs(seq=seq, t_source_ns=seq * 40, blobs=(Blob(row=11.0, col=21.0, peak=180.0,
                                                         area=9, snr=90.0),)),
        Windows(seq=seq, t_source_ns=seq * 40, windows=(info,),
                patches=np.zeros((1, 5, 11, 11), np.float32)),
        Points(seq=seq, t_source_ns=seq * 40, points=(
            Point(row=10.8123456, col=21.1, score=201.237, window_id=0),
            Point(row=11.2, col=20.9, score=190.0, window_id=0),
        )),
        Tracks(seq=seq, t_source_ns=seq * 40, stamps=stamps, tracks=(
            Track(track_id=0, row=10.81, col=21.1, vrow=0.1, vcol=-0.0004, score=200.0, age=4),
        )),
    ]


def _feed(stage, seqs, stamps=False):
    for seq in seqs:
        for msg in _messages(seq, 1_000_000_000 + seq * 20_000_000 if stamps else None):
            if type(msg) in stage.join.kinds:
                stage.process(msg)


def test_console_prints_one_line_per_block_with_fps_from_runner_stamps():
    stream = io.StringIO()
    stage = ConsoleSummary(ConsoleConfig(every=5), stream=stream)
    _feed(stage, range(12), stamps=True)
    stage.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # frames 5, 10 and the flushed rest
    assert lines[0] == "frames 5 | fps 50.0 | groups 1.0 | points 2.0 | tracks 1.0"
    assert lines[1].startswith("frames 10 | fps 50.0 |") and lines[2].startswith("frames 12 |")


def test_console_without_stamps_shows_no_fps():
    stream = io.StringIO()
    stage = ConsoleSummary(ConsoleConfig(every=2), stream=stream)
    _feed(stage, range(2))
    assert stream.getvalue() == "frames 2 | fps - | groups 1.0 | points 2.0 | tracks 1.0\n"


def test_json_lines_are_valid_rounded_and_deterministic(tmp_path):
    texts = []
    for run in range(2):
        path = tmp_path / f"run{run}" / "points.jsonl"
        stage = JsonLinesWriter(JsonLinesConfig(path=str(path), decimals=3))
        stage.start()
        _feed(stage, range(3))
        stage.flush()
        stage.stop()
        texts.append(path.read_bytes())
    assert texts[0] == texts[1] and b"-0.0" not in texts[0]
    records = [json.loads(line) for line in texts[0].decode().splitlines()]
    assert [r["seq"] for r in records] == [0, 1, 2]
    first = records[0]
    assert first["points"][0] == {"row": 10.812, "col": 21.1, "score": 201.24, "window_id": 0}
    assert first["tracks"][0] == {"id": 0, "row": 10.81, "col": 21.1, "vrow": 0.1,
                                  "vcol": 0.0, "score": 200.0, "age": 4}


def _colour(picture: np.ndarray, bgr: tuple[int, int, int]) -> np.ndarray:
    """Mask of the pixels within 40 grey levels of ``bgr`` on every channel."""
    return np.all(np.abs(picture.astype(int) - np.array(bgr)) < 40, axis=-1)


def test_overlay_png_has_the_frame_and_a_zoomed_tile_with_every_mark(tmp_path):
    config = OverlayConfig(directory=str(tmp_path), png_every=2, scale=3, tiles=1, tile_px=5,
                           zoom=10)
    stage = OverlayWriter(config)
    _feed(stage, range(3))
    stage.stop()
    assert [p.name for p in stage.written] == ["overlay_000000.png", "overlay_000002.png"]
    picture = cv2.imread(str(stage.written[0]), cv2.IMREAD_COLOR)
    tile_h = CAPTION + 5 * 10 + GAP
    assert picture.shape == (HEADER + max(SHAPE[0] * 3, tile_h), SHAPE[1] * 3 + 5 * 10 + GAP, 3)
    frame = picture[HEADER:HEADER + SHAPE[0] * 3, : SHAPE[1] * 3]
    y, x = 6 * 3, 16 * 3 + 10  # top edge of the window's crop box
    assert tuple(frame[y, x]) == (255, 160, 0)
    assert _colour(frame, (0, 0, 255)).any()  # red point crosses
    assert _colour(frame, (0, 255, 255)).any()  # yellow track ids
    tile = picture[HEADER + CAPTION:, SHAPE[1] * 3 + GAP:]
    # the tile shows window pixels 3..7 (frame 9..13, 19..23) at 10 px per pixel:
    # truth (11.0, 21.4) -> tile pixel centre (25, 29); a green circle of radius 2-3 around it
    near = _colour(tile[20:31, 24:35], (0, 220, 0))
    assert near.any() and not _colour(tile[:, 40:], (0, 220, 0)).any()
    assert _colour(tile, (0, 0, 255)).any() and _colour(tile, (0, 255, 255)).any()


def test_overlay_without_png_draws_nothing(tmp_path, monkeypatch):
    calls = []
    def fake_draw(*args, **kwargs):
        calls.append(kwargs["seq"])
        return np.zeros((4, 4, 3), np.uint8)

    monkeypatch.setattr("stages.sinks.draw_overlay", fake_draw)
    stage = OverlayWriter(OverlayConfig(directory=str(tmp_path), png_every=5))
    _feed(stage, range(7))
    assert stage.frames == 7 and calls == [0, 5]


def test_overlay_fed_encoded_messages_decodes_only_the_frames_it_draws(tmp_path, monkeypatch):
    decoded = []
    real_decode = WireMessage.decode
    monkeypatch.setattr(WireMessage, "decode",
                        lambda self: decoded.append(self.seq) or real_decode(self))
    pictures = {}
    for raw in (False, True):
        folder = tmp_path / str(raw)
        stage = OverlayWriter(OverlayConfig(directory=str(folder), png_every=5))
        for seq in range(7):
            for msg in _messages(seq):
                stage.process(peek(encode(msg)) if raw else msg)
        pictures[raw] = [cv2.imread(str(p)) for p in stage.written]
    assert decoded == [0] * 5 + [5] * 5  # frames 0 and 5 drawn: their 5 messages each
    assert len(pictures[True]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(*pictures.values(), strict=True))


def test_overlay_video_is_written(tmp_path):
    video = tmp_path / "live.avi"
    stage = OverlayWriter(OverlayConfig(png_every=0, video=str(video), scale=2))
    _feed(stage, range(4))
    stage.stop()
    capture = cv2.VideoCapture(str(video))
    ok, first = capture.read()
    count = 1 + sum(1 for _ in iter(lambda: capture.read()[0], False))
    capture.release()
    expected = draw_overlay(np.zeros(SHAPE, np.float32), scale=2).shape
    assert ok and first.shape == expected and count == 4


def test_draw_overlay_and_stretch():
    img = np.linspace(0, 1000, 100, dtype=np.float32).reshape(10, 10)
    grey = stretch_to_uint8(img, 0.0, 100.0)
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert draw_overlay(img, scale=4, tiles=0).shape == (HEADER + 40, 40, 3)
    # the picture size does not depend on the number of windows (a video needs one size)
    infos = [WindowInfo(blob_id=i, origin_row=0, origin_col=0, frame_index=2) for i in range(9)]
    sizes = {draw_overlay(img, windows=infos[:n], tiles=4, zoom=6).shape for n in (0, 2, 9)}
    assert sizes == {(HEADER + CAPTION + 30 + GAP, 30 + 4 * (30 + GAP), 3)}  # one row of 4


def test_track_labels_stay_inside_the_picture():
    img = np.zeros((20, 20), np.float32)
    track = Track(track_id=123456, row=10.0, col=19.0, vrow=0.0, vcol=0.0, score=1.0, age=3)
    picture = draw_overlay(img, tracks=[track], scale=3, tiles=0)
    yellow = _colour(picture[HEADER:], (0, 255, 255))
    columns = np.flatnonzero(yellow.any(axis=0))
    assert columns.size and columns.max() < 60 and columns.min() < 40  # moved left to fit


def test_ids_of_one_group_share_one_label():
    tracks = [Track(track_id=i, row=r, col=c, vrow=0.0, vcol=0.0, score=1.0, age=3)
              for i, (r, c) in enumerate([(10.0, 10.0), (30.0, 5.0), (10.3, 10.0), (9.7, 10.1)])]
    assert label_groups(tracks) == {(10.0, 10.0): [0, 2, 3], (30.0, 5.0): [1]}
