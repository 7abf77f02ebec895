"""Record and replay: MCAP round trip, killed recorders, the outputs digest, every replay source.

The chain runs a cheap unmixer: ISTA capped at 30 iterations, saved as a weights file (the
registered "ista" runs 3000 iterations, about 1 s per frame).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.config import ConfigError
from pipeline.__main__ import main
from pipeline.attach.digest import OutputsDigest, canonical_value, frame_line
from pipeline.attach.record import (
    McapRecorder,
    RecorderConfig,
    RecordingError,
    read_recording,
    recording_info,
)
from pipeline.replay.importers import (
    ArraySource,
    ArraySourceConfig,
    FileSourceConfig,
    ImageFolderSource,
    McapSource,
    McapSourceConfig,
    VideoSource,
    VideoSourceConfig,
)
from pipeline.replay.plan import ReplayOptions, plan_replay
from stages.messages import (
    Blob,
    Blobs,
    Frame,
    Maps,
    Point,
    Points,
    Track,
    Tracks,
    TruthPoint,
    WindowInfo,
    Windows,
)

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def save_fast_ista(folder: Path) -> Path:
    """Weights file of ISTA capped at 30 iterations (a cheap, real unmixer)."""
    from models.classical.ista import IstaUnmixer
    from models.weights import save_weights

    path = folder / "ista30.pt"
    save_weights(path, IstaUnmixer(max_iter=30), "ista", {"max_iter": 30}, {"note": "tests"})
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_fast_ista(tmp_path_factory.mktemp("weights"))


def chain_config(folder: Path, weights: Path, frames: int = 16) -> Path:
    path = folder / "chain.yaml"
    path.write_text(f"""
run: {{frames: {frames}}}
stages:
  - {{name: source, kind: simulator, config: {{seed: 3, height: 72, width: 72, groups: 2}}}}
  - {{name: detector, kind: detector}}
  - {{name: cropper, kind: cropper}}
  - {{name: unmixer, kind: unmixer, config: {{model: ista, weights: {weights}, threads: 1}}}}
  - {{name: extractor, kind: extractor}}
  - {{name: tracker, kind: tracker}}
  - {{name: scoring, kind: scoring}}
""")
    return path


def detector_config(folder: Path) -> Path:
    """Simulator + detector only: no torch, quick to start in a subprocess."""
    path = folder / "detect.yaml"
    path.write_text("""
stages:
  - {name: source, kind: simulator, config: {seed: 1, height: 48, width: 48, groups: 1}}
  - {name: detector, kind: detector}
""")
    return path


def fields_equal(a, b) -> bool:
    if type(a) is not type(b) or (a.seq, a.t_source_ns, dict(a.stamps)) != (
            b.seq, b.t_source_ns, dict(b.stamps)):
        return False
    for name in [*a.ARRAYS, *a.RECORDS]:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or x.tobytes() != y.tobytes():
                return False
        elif x != y:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Recorder.


def sample_messages():
    rng = np.random.default_rng(0)
    truth = (TruthPoint(group=0, row=3.25, col=4.5, brightness=230.0),)
    info = (WindowInfo(blob_id=2, origin_row=1, origin_col=-3, frame_index=4, truth=truth),)
    patches = rng.random((1, 5, 11, 11), dtype=np.float32)
    return [
        ("frames", Frame(seq=0, t_source_ns=0, image=rng.integers(0, 4000, (6, 7)).astype(
            np.uint16), truth=truth, stamps={"source.out": 12})),
        ("frames", Frame(seq=1, t_source_ns=40_000_000, image=np.zeros((6, 7), np.float32))),
        ("external_blobs", Blobs(seq=0, t_source_ns=0, blobs=[Blob(1.5, 2.5, 9.0, 3, 7.0)])),
        ("windows", Windows(seq=0, t_source_ns=0, windows=info, patches=patches)),
        ("maps", Maps(seq=0, t_source_ns=0, windows=info, patches=patches,
                      maps=rng.random((1, 33, 33), dtype=np.float32))),
        ("points", Points(seq=0, t_source_ns=0, points=[Point(3.2, 4.4, 80.0, 2)])),
        ("tracks", Tracks(seq=1, t_source_ns=40_000_000,
                          tracks=[Track(0, 3.2, 4.4, 0.01, -0.02, 80.0, 3)])),
    ]


def test_recorder_round_trip(tmp_path):
    path = tmp_path / "sub" / "rec.mcap"
    recorder = McapRecorder(RecorderConfig(path=str(path), config_yaml="run: {}\n"))
    recorder.start()
    for topic, msg in sample_messages():
        recorder.process_topic(topic, msg)
    recorder.stop()
    recorder.stop()  # idempotent
    back = list(read_recording(path))
    expected = sample_messages()
    assert [t for t, _ in back] == [t for t, _ in expected]
    assert all(fields_equal(m, e) for (_, m), (_, e) in zip(back, expected, strict=True))
    info = recording_info(path)
    assert info.finished and info.config_yaml == "run: {}\n"
    assert info.topics == {"frames": 2, "external_blobs": 1, "windows": 1, "maps": 1,
                           "points": 1, "tracks": 1}
    assert (info.start_ns, info.end_ns) == (0, 40_000_000)
    assert [m.seq for _, m in read_recording(path, ["frames"], start_ns=1)] == [1]
    assert [t for t, _ in read_recording(path, end_ns=1)] == [
        "frames", "external_blobs", "windows", "maps", "points"]


def test_reading_a_file_that_is_not_mcap_names_the_problem(tmp_path):
    bad = tmp_path / "x.mcap"
    bad.write_bytes(b"not an mcap file")
    with pytest.raises(RecordingError, match="not an MCAP file"):
        list(read_recording(bad))
    assert main(["replay", str(bad), "--config", str(detector_config(tmp_path))]) == 2


def test_a_damaged_chunk_names_the_file_not_the_codec(tmp_path):
    path = tmp_path / "rec.mcap"
    recorder = McapRecorder(RecorderConfig(path=str(path)))
    recorder.start()
    for seq in range(40):
        recorder.process_topic("frames", Frame(seq=seq, t_source_ns=seq, image=np.full(
            (64, 64), seq, np.uint16)))
    recorder.stop()
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 4, len(data) // 2, 97):  # inside the compressed chunks
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=r"rec\.mcap: a chunk is damaged"):
        list(read_recording(path))


@pytest.mark.parametrize("sig, finished", [(signal.SIGKILL, False), (signal.SIGTERM, True)])
def test_killed_recording_reads_back(tmp_path, sig, finished):
    """A recording process killed mid-run: SIGTERM finishes the file, SIGKILL leaves it
    unfinished, and both read back in order as far as they go."""
    path = tmp_path / "live.mcap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(detector_config(tmp_path)),
         "--record", str(path), "--set", "run.rate_hz=200", "--set", "run.record.flush_s=0.1"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if path.exists() and recording_info(path).topics.get("frames", 0) >= 20:
                break
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    info = recording_info(path)
    assert info.finished is finished, err
    frames = [m.seq for t, m in read_recording(path) if t == "frames"]
    blobs = [m.seq for t, m in read_recording(path) if t == "blobs"]
    assert len(frames) >= 20 and frames == list(range(len(frames)))
    assert blobs == list(range(len(blobs))) and len(blobs) >= len(frames) - 1


# ---------------------------------------------------------------------------------------------
# outputs_digest.


def test_digest_canonical_form():
    assert canonical_value(-0.0000001) == "0.000000" and canonical_value(1 / 3) == "0.333333"
    assert frame_line(3, {"points": [[1, "2.000000"]], "tracks": None}) == (
        b'{"points":[[1,"2.000000"]],"seq":3,"tracks":null}\n')
    digest = OutputsDigest()
    digest.process_topic("points", Points(seq=0, t_source_ns=0, points=[Point(1.0, 2.0, 3.0, 4)]))
    digest.process_topic("points", Points(seq=1, t_source_ns=0))
    digest.process_topic("tracks", Tracks(seq=0, t_source_ns=0))
    digest.flush()  # seq 1 never got its tracks: hashed last, with tracks null
    import hashlib

    expected = hashlib.sha256(
        b'{"points":[["1.000000","2.000000","3.000000",4]],"seq":0,"tracks":[]}\n'
        b'{"points":[],"seq":1,"tracks":null}\n').hexdigest()
    assert digest.summary() == {"sha256": expected, "frames": 2,
                                "records": {"points": 1, "tracks": 0}}


def test_seq_trace_ranges_and_the_inline_runner_skips_untraced_inputs(tmp_path):
    from pipeline.attach.trace import SeqTrace, read_trace, write_trace
    from pipeline.config import load
    from pipeline.run.runner import run_inline

    trace = SeqTrace()
    for seq in (0, 1, 2, 5, 7, 8):
        trace.add("frames", seq)
    assert trace.to_dict() == {"frames": [[0, 2], [5, 5], [7, 8]]}
    assert [s for s in range(10) if ("frames", s) in trace] == [0, 1, 2, 5, 7, 8]
    assert ("blobs", 0) not in trace
    write_trace(tmp_path, "detector", trace)
    assert read_trace(tmp_path, "detector").to_dict() == trace.to_dict()
    assert read_trace(tmp_path, "cropper") is None
    config, plans = load(detector_config(tmp_path), ["run.frames=10"])
    plans[1] = dataclasses.replace(plans[1], replay_inputs=trace)
    report = run_inline(plans, config.run)
    assert report["stages"]["detector"]["msgs_in"] == 6
    assert report["stages"]["detector"]["skipped"] == 4


def test_lossless_replay_reproduces_the_live_digest(tmp_path, weights):
    config = chain_config(tmp_path, weights)
    rec = tmp_path / "live.mcap"
    assert main(["run", str(config), "--record", str(rec), "--report",
                 str(tmp_path / "live.json")]) == 0
    live = json.loads((tmp_path / "live.json").read_text())
    assert live["outputs"]["records"]["points"] > 0 and live["outputs"]["records"]["tracks"] > 0
    # The recorded config is used when --config is not given.
    assert main(["replay", str(rec), "--lossless", "--report", str(tmp_path / "r.json")]) == 0
    replay = json.loads((tmp_path / "r.json").read_text())
    assert replay["outputs_digest"] == live["outputs_digest"]
    assert replay["outputs"] == live["outputs"]
    assert replay["scores"]["scoring"] == live["scores"]["scoring"]
    # Starting after the detector (recorded blobs) or at the tracker gives the same outputs.
    for topics in ("frames,blobs", "points"):
        assert main(["replay", str(rec), "--lossless", "--topics", topics, "--report",
                     str(tmp_path / "t.json")]) == 0
        cut = json.loads((tmp_path / "t.json").read_text())
        assert cut["outputs_digest"] == live["outputs_digest"], topics
    # A different chain gives a different digest.
    assert main(["replay", str(rec), "--lossless", "--set", "stages.tracker.confirm_hits=6",
                 "--report", str(tmp_path / "k.json")]) == 0
    assert json.loads((tmp_path / "k.json").read_text())["outputs_digest"] != (
        live["outputs_digest"])


def test_replay_of_a_missing_topic_is_a_config_error(tmp_path, weights):
    rec = tmp_path / "r.mcap"
    assert main(["run", str(detector_config(tmp_path)), "--frames", "3", "--record",
                 str(rec), "--record-topics", "frames"]) == 0
    assert recording_info(rec).topics == {"frames": 3}
    with pytest.raises(ConfigError, match=r"has no topic\(s\) \['blobs'\]"):
        plan_replay(rec, {"stages": [{"name": "s", "kind": "simulator"},
                                     {"name": "d", "kind": "detector"}]},
                    ReplayOptions(topics=("blobs",)))


def test_services_are_placed_and_checked(tmp_path):
    from models.config import build_config
    from pipeline.config import RunConfig, load
    from pipeline.run.compose import add_services

    _, plans = load(detector_config(tmp_path))
    run = build_config(RunConfig, {"publish": {"endpoint": "ipc:///tmp/x"},
                                   "record": {"path": "r.mcap"}})
    names = [p.name for p in add_services(plans, run)]
    assert names == ["source", "_tap", "detector", "_record"]  # tap first: publishes first
    with pytest.raises(ConfigError, match=r"\['tracks'\] not produced by this chain"):
        add_services(plans, build_config(RunConfig, {"record": {"path": "r.mcap",
                                                                "topics": ["tracks"]}}))


# ---------------------------------------------------------------------------------------------
# Replay sources.


def frames_of(source):
    source.start()
    try:
        return list(source)
    finally:
        source.stop()


def stack16(n=6, h=9, w=11):
    return (np.arange(n * h * w, dtype=np.uint16).reshape(n, h, w) * 97 + 300).astype(np.uint16)


def test_image_folder_keeps_16_bits_in_numeric_order(tmp_path):
    stack = stack16()
    for i, image in enumerate(stack):  # names sort wrongly as text: f10 before f2
        assert cv2.imwrite(str(tmp_path / f"f{i * 4}_v2.png"), image)
    frames = frames_of(ImageFolderSource(FileSourceConfig(path=str(tmp_path), rate=0, fps=10)))
    assert [f.seq for f in frames] == list(range(6))
    assert [f.t_source_ns for f in frames] == [i * 100_000_000 for i in range(6)]
    assert all(f.image.dtype == np.uint16 for f in frames)
    assert np.array_equal(np.stack([f.image for f in frames]), stack)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_tiff_folder(tmp_path, dtype):
    stack = stack16().astype(dtype) / (3 if dtype == np.float32 else 1)
    for i, image in enumerate(stack.astype(dtype)):
        assert cv2.imwrite(str(tmp_path / f"{i:03d}.tif"), image)
    frames = frames_of(ImageFolderSource(FileSourceConfig(path=str(tmp_path), rate=0)))
    assert np.array_equal(np.stack([f.image for f in frames]), stack.astype(dtype))
    assert frames[0].image.dtype == dtype


def test_image_folder_errors_name_the_file(tmp_path):
    cv2.imwrite(str(tmp_path / "a1.png"), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(tmp_path / "b1.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match="both carry frame number 1"):
        frames_of(ImageFolderSource(FileSourceConfig(path=str(tmp_path))))


def test_npy_and_npz_stacks(tmp_path):
    stack = stack16()
    np.save(tmp_path / "s.npy", stack)
    np.savez(tmp_path / "s.npz", frames=stack, other=np.zeros(3))
    np.savez(tmp_path / "two.npz", a=stack, b=stack)
    for name, key in (("s.npy", None), ("s.npz", None), ("two.npz", "b")):
        frames = frames_of(ArraySource(ArraySourceConfig(path=str(tmp_path / name), key=key,
                                                         rate=0)))
        assert np.array_equal(np.stack([f.image for f in frames]), stack), name
    with pytest.raises(ConfigError, match="choose the frame array with --key"):
        frames_of(ArraySource(ArraySourceConfig(path=str(tmp_path / "two.npz"))))


def test_time_window_loop_and_rate(tmp_path):
    np.save(tmp_path / "s.npy", stack16(n=10))

    def source(**timing):
        return ArraySource(ArraySourceConfig(path=str(tmp_path / "s.npy"), fps=25, **timing))

    assert [f.seq for f in frames_of(source(rate=0, start_s=0.08, end_s=0.2))] == [2, 3, 4]
    looped = source(rate=0, loop=True, start_s=0.32)  # frames 8, 9, then again as 10, 11, ...
    looped.start()
    frames = [f for f, _ in zip(looped, range(6), strict=False)]
    assert [f.seq for f in frames] == [8, 9, 10, 11, 12, 13]
    assert [f.t_source_ns for f in frames] == [320_000_000 + 40_000_000 * i for i in range(6)]
    assert np.array_equal(frames[2].image, frames[0].image)
    t0 = time.monotonic()
    assert len(frames_of(source(rate=2.0, end_s=0.4))) == 10  # 9 periods of 20 ms
    assert 0.17 <= time.monotonic() - t0 < 2.0


def test_mjpg_video_warns_and_replays_8_bit(tmp_path, caplog):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (32, 24),
                             isColor=False)
    assert writer.isOpened()
    for i in range(5):
        image = np.full((24, 32), 40, np.uint8)
        image[8:14, 4 + 4 * i: 10 + 4 * i] = 220
        writer.write(image)
    writer.release()
    with caplog.at_level(logging.WARNING):
        frames = frames_of(VideoSource(VideoSourceConfig(path=str(path), rate=0)))
    assert "lossy" in caplog.text and "NOT representative" in caplog.text
    assert [f.seq for f in frames] == list(range(5))
    assert frames[1].t_source_ns == 50_000_000  # the file's 20 fps
    assert all(f.image.dtype == np.uint8 and f.image.shape == (24, 32) for f in frames)
    bright = np.argwhere(frames[2].image > 150)
    assert abs(bright[:, 1].mean() - 14.5) < 1.0  # the square moved 4 px per frame


def test_replay_cli_runs_an_image_folder_through_the_chain(tmp_path):
    stack = np.full((5, 48, 48), 1000, np.uint16)
    stack[:, 20:23, 30:33] = 3000
    for i, image in enumerate(stack):
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
    report = tmp_path / "r.json"
    assert main(["replay", str(tmp_path), "--config", str(detector_config(tmp_path)),
                 "--rate", "max", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["frames"] == 5 and data["stages"]["detector"]["msgs_in"] == 5
    assert data["outputs_digest"] is None  # no points or tracks in this chain


def test_mcap_source_window(tmp_path):
    rec = tmp_path / "r.mcap"
    assert main(["run", str(detector_config(tmp_path)), "--frames", "10", "--record",
                 str(rec)]) == 0
    source = McapSource(McapSourceConfig(path=str(rec), topics=("frames", "blobs"), rate=0,
                                         start_s=0.2, end_s=0.28))
    got = [(type(m).__name__, m.seq) for m in frames_of(source)]
    assert got == [("Frame", 5), ("Blobs", 5), ("Frame", 6), ("Blobs", 6)]  # at 0.2, 0.24 s


def test_seqcsist_replay_is_scored_with_cso_map(tmp_path, weights):
    from models.harness import evaluate_model
    from models.weights import load_model
    from sim.dataset import save_npz, simulate
    from sim.seqcsist_io import write_split

    dataset = simulate(2, seed=5)
    save_npz(tmp_path / "test.npz", dataset)
    write_split(tmp_path / "root" / "test", dataset)
    model, _ = load_model("ista", weights)
    expected = evaluate_model(model, dataset, mode="points")
    config = chain_config(tmp_path, weights)
    for source, extra in ((tmp_path / "test.npz", []), (tmp_path / "root", ["--split", "test"])):
        report = tmp_path / "r.json"
        assert main(["replay", str(source), "--config", str(config), "--report", str(report),
                     *extra]) == 0
        data = json.loads(report.read_text())
        assert set(data["stages"]) == {"replay", "unmixer", "extractor", "cso_map", "_digest"}
        scores = data["scores"]["cso_map"]
        assert scores["windows"] == expected["frames"] == 32
        assert math.isclose(scores["cso_map"]["mAP"], expected["mAP"], abs_tol=1e-9)
        assert scores["cso_map"]["mAP"] > 0


def test_one_format_table_recognises_every_source(tmp_path):
    from pipeline.replay.formats import FORMATS, detect_format
    from sim.dataset import save_npz, simulate
    from sim.seqcsist_io import write_split

    np.save(tmp_path / "stack.npy", np.zeros((2, 8, 8), np.uint8))
    save_npz(tmp_path / "test.npz", simulate(1, seed=1))
    write_split(tmp_path / "root" / "test", simulate(1, seed=2))
    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "f_1.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "clip.mcap").write_bytes(b"")
    (tmp_path / "clip.mp4").write_bytes(b"")
    found = {name: detect_format(tmp_path / name) for name in
             ("stack.npy", "test.npz", "root", "root/test", "frames", "clip.mcap", "clip.mp4")}
    assert found == {"stack.npy": "array", "test.npz": "seqcsist", "root": "seqcsist",
                     "root/test": "seqcsist", "frames": "images", "clip.mcap": "mcap",
                     "clip.mp4": "video"}
    assert set(found.values()) == set(FORMATS)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a replayable source; expected one of: mcap: "):
        detect_format(tmp_path / "notes.txt")
