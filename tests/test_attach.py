"""Attaching to a running pipeline: the tap, CURVE allow-list, the subscribe CLI, the
dependency-free example client, and an external detector process feeding the chain."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from test_record_replay import chain_config, save_fast_ista

from models.config import ConfigError
from pipeline.__main__ import main
from pipeline.attach.external import ExternalInput, ExternalInputConfig
from pipeline.attach.record import read_recording
from pipeline.attach.tap import Publisher, PublisherConfig
from pipeline.subscribe import _Tally, json_record, summary_line
from pipeline.wire.codec import decode
from pipeline.wire.curve import CurveKeys, connect_client, create_keys
from stages.messages import (
    Blob,
    Blobs,
    EndOfStream,
    Frame,
    Point,
    Points,
    Skipped,
    Stats,
    Track,
    Tracks,
)

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 60


def sub_socket(ctx, endpoint, keys=None):
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if keys is not None:
        connect_client(sock, *keys)
    sock.connect(endpoint)
    return sock


def drain(sock, timeout_ms=0):
    """Messages waiting on ``sock`` (the first wait up to ``timeout_ms``)."""
    got = []
    while sock.poll(timeout_ms, zmq.POLLIN):
        got.append(sock.recv_multipart())
        timeout_ms = 0
    return got


def test_curve_tap_serves_only_listed_clients(tmp_path):
    paths = create_keys(tmp_path / "keys", ["viewer", "intruder"])
    (paths["allowed"] / "intruder.key").unlink()  # a key pair, but not on the allow-list
    tap = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*",
                                    curve=CurveKeys(str(paths["server_secret"]),
                                                    str(paths["allowed"]))))
    tap.start()
    ctx = zmq.Context()
    try:
        server = paths["server_public"]
        viewer = sub_socket(ctx, tap.endpoint, (server, paths["client:viewer"]))
        intruder = sub_socket(ctx, tap.endpoint, (server, paths["client:intruder"]))
        plain = sub_socket(ctx, tap.endpoint)
        got, seq, deadline = [], 0, time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:  # until the handshake is done
            tap.process_topic("points", Points(seq=seq, t_source_ns=0))
            seq += 1
            got += drain(viewer, 20)
        assert len(got) >= 3 and got[0][0] == b"points"
        for _ in range(10):
            tap.process_topic("points", Points(seq=seq, t_source_ns=0))
            seq += 1
        assert drain(viewer, 1000)  # the listed client still receives
        assert drain(intruder, 500) == [] and drain(plain, 500) == []
        for sock in (viewer, intruder, plain):
            sock.close(linger=0)
    finally:
        tap.stop()
        ctx.destroy(linger=0)
    create_keys(tmp_path / "k2")
    with pytest.raises(ConfigError, match="holds only a public key"):
        Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*",
                                  curve=CurveKeys(str(tmp_path / "k2" / "server.key"),
                                                  str(tmp_path / "k2" / "allowed")))).start()


def publish_until_subscribed(tap, sock) -> int:
    """Publish points seqs 0, 1, ... until ``sock`` gets the last one published (its
    subscription is through, the slow-joiner race over, nothing left in flight); returns the
    next seq."""
    seq, deadline = 0, time.monotonic() + 10
    while time.monotonic() < deadline:
        tap.process_topic("points", Points(seq=seq, t_source_ns=0))
        seq += 1
        if any(decode(f).seq == seq - 1 for f in drain(sock, 20)):
            return seq
    raise AssertionError("the subscription never reached the tap")


@contextlib.contextmanager
def tap_and_subscriber(tmp_path, **options):
    """A started tap on an ipc endpoint with topics points and tracks, and a SUB socket whose
    subscription is through; yields (tap, sock, next points seq)."""
    tap = Publisher(PublisherConfig(endpoint=f"ipc://{tmp_path}/tap", topics=("points", "tracks"),
                                    **options))
    tap.start()
    ctx = zmq.Context()
    sock = sub_socket(ctx, tap.endpoint)
    try:
        yield tap, sock, publish_until_subscribed(tap, sock)
    finally:
        sock.close(linger=0)
        tap.stop()
        ctx.destroy(linger=0)


def receive(sock, n: int, timeout_s: float = 10.0) -> list[tuple[str, object]]:
    """The next ``n`` messages on ``sock`` as (topic, message), or fewer after ``timeout_s``."""
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < n and sock.poll(max(1, int(1e3 * (deadline - time.monotonic())))):
        frames = sock.recv_multipart()
        got.append((bytes(frames[0]).decode(), decode(frames)))
    return got


def test_tap_announces_gaps_and_ends_every_topic(tmp_path):
    with tap_and_subscriber(tmp_path) as (tap, sock, seq):
        tap.process_topic("points", Points(seq=seq + 2, t_source_ns=7))  # seq, seq+1 dropped
        tap.process_topic("tracks", Tracks(seq=seq, t_source_ns=0))  # its last seqs never come
        tap.flush()
        msgs = receive(sock, 6)
        assert [(t, type(m).__name__, m.seq) for t, m in msgs] == [
            ("points", "Skipped", seq), ("points", "Points", seq + 2), ("tracks", "Tracks", seq),
            ("tracks", "Skipped", seq + 1), ("points", "EndOfStream", seq + 1),
            ("tracks", "EndOfStream", 1)]
        assert msgs[0][1].last == seq + 1 and msgs[0][1].t_source_ns == 7
        assert msgs[3][1].last == seq + 2
        assert tap.summary()["skipped"] == 4


def test_tap_heartbeat_goes_out_on_every_topic_only_while_idle(tmp_path):
    with tap_and_subscriber(tmp_path, heartbeat_s=0.2) as (tap, sock, seq):
        tap.idle()
        assert receive(sock, 1, timeout_s=0.1) == []  # a message went out just now: no beat
        time.sleep(0.3)
        tap.idle()
        beats = receive(sock, 2)
        assert [t for t, _ in beats] == ["points", "tracks"]
        assert all(isinstance(m, Stats) and m.stage == "tap" and m.msgs_out == seq
                   for _, m in beats)


def test_subscriber_tally_tells_chain_drops_from_its_own_losses():
    tally = _Tally()
    for msg in (Points(seq=0, t_source_ns=0), Skipped(seq=1, t_source_ns=0, last=2),
                Points(seq=3, t_source_ns=0), Points(seq=6, t_source_ns=0)):  # 4, 5 lost here
        tally.add("points", msg)
    assert not tally.all_ended(set())
    tally.add("points", Stats(seq=40, t_source_ns=0, stage="tap"))  # a heartbeat: not data
    tally.add("points", EndOfStream(seq=5, t_source_ns=0))
    assert tally.all_ended(set()) and not tally.all_ended({"points", "tracks"})
    assert tally.report() == ["end of points: received 3 of 5 published; 2 skipped inside the "
                              "chain, 2 lost by this subscriber"]


def blobs_frames(seq: int, rows=()) -> list[bytes]:
    """A Blobs message as an outside detector sends it: one blob per row."""
    head = {"schema": "csist.Blobs", "version": 3, "topic": "blobs", "seq": seq,
            "t_source_ns": 123, "sensor": 0, "sensor_seq": seq, "stamps": {}, "buffers": [],
            "fields": {"blobs": [{"row": r, "col": 2.0, "peak": 9.0, "area": 3, "snr": 5.0}
                                 for r in rows]}}
    return [b"blobs", msgpack.packb(head)]


def external_input_and_pusher(tmp_path, timeout_s: float):
    """A started ExternalInput on an ipc endpoint, and a context + PUSH socket to feed it."""
    endpoint = f"ipc://{tmp_path}/ext"
    stage = ExternalInput(ExternalInputConfig(endpoint=endpoint, timeout_s=timeout_s))
    stage.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoint)
    return stage, ctx, push


def test_external_input_counts_the_connection_an_oversize_message_cost(tmp_path, caplog):
    stage, ctx, push = external_input_and_pusher(tmp_path, timeout_s=5.0)
    try:
        push.send_multipart([b"blobs", b"x" * (65 << 20)])  # over the 64 MiB limit
        time.sleep(0.5)  # ZeroMQ drops the connection; the PUSH socket reconnects
        push.send_multipart(blobs_frames(0))
        with caplog.at_level("INFO", logger="pipeline.attach.external"):
            image = np.zeros((2, 2), np.float32)
            (out,) = stage.process(Frame(seq=0, t_source_ns=1, image=image))
            stage.stop()
        assert out.seq == 0 and stage.summary()["received"] == 1  # the next message came
        assert stage.summary()["disconnects"] >= 1
        assert "over the 64 MiB limit" in caplog.text
    finally:
        stage.stop()
        push.close(linger=0)
        ctx.destroy(linger=0)


def test_keys_cli_writes_the_layout(tmp_path, capsys):
    assert main(["keys", str(tmp_path), "--client", "a", "--client", "b"]) == 0
    out = capsys.readouterr().out
    assert "run.curve.secret_key" in out and "run.chain_key" in out
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["allowed/a.key", "allowed/b.key", "chain.key", "chain.key_secret",
                     "clients/a.key", "clients/a.key_secret", "clients/b.key",
                     "clients/b.key_secret", "server.key", "server.key_secret"]


def test_external_input_pairs_answers_by_seq(tmp_path):
    stage, ctx, push = external_input_and_pusher(tmp_path, timeout_s=0.3)
    try:
        def blobs(seq, row):
            return blobs_frames(seq, [row])

        push.send_multipart([b"blobs", b"\xc1garbage"])
        push.send_multipart(blobs(1, 11.0))  # early
        push.send_multipart(blobs(0, 10.0))
        frame = Frame(seq=0, t_source_ns=40, image=np.zeros((2, 2), np.float32))
        (out0,) = stage.process(frame)
        (out1,) = stage.process(Frame(seq=1, t_source_ns=80, image=frame.image))
        assert (out0.seq, out0.t_source_ns, out0.blobs[0].row) == (0, 40, 10.0)
        assert (out1.seq, out1.t_source_ns, out1.blobs[0].row) == (1, 80, 11.0)
        t0 = time.monotonic()
        (out2,) = stage.process(Frame(seq=2, t_source_ns=120, image=frame.image))
        assert 0.25 < time.monotonic() - t0 < 2 and isinstance(out2, Blobs) and not out2.blobs
        push.send_multipart(blobs(1, 0.0))  # after the chain passed seq 1
        push.send_multipart(blobs(2**64 - 1, 1.0))  # absurdly far ahead: not kept
        push.send_multipart(blobs(4, float("nan")))  # invalid: dropped before the tap sees it
        stage.process(Frame(seq=3, t_source_ns=160, image=frame.image))
        (out4,) = stage.process(Frame(seq=4, t_source_ns=200, image=frame.image))
        assert out4.seq == 4 and out4.blobs == ()
        assert stage.summary() == {"received": 3, "missed": 2, "late": 1, "too_early": 1,
                                   "evicted": 0, "invalid_blobs": 1, "decode_errors": 1,
                                   "wrong_schema": 0, "disconnects": 0}
        assert stage.input_counters() == {"decode_errors": 1}  # the stage row's number too
    finally:
        push.close(linger=0)
        ctx.destroy(linger=0)
        stage.stop()


def test_subscribe_line_formats():
    frame = Frame(seq=3, t_source_ns=120_000_000, image=np.zeros((4, 5), np.uint16), truth=())
    assert summary_line("frames", frame) == (
        "frames     seq       3  t       0.120 s  image 4x5 uint16  truth 0")
    tracks = Tracks(seq=1, t_source_ns=0, tracks=[Track(7, 1.5, 2.5, 0.0, 0.1, 90.0, 4)])
    record = json_record("tracks", tracks)
    assert record["fields"]["tracks"][0] == {"track_id": 7, "row": 1.5, "col": 2.5, "vrow": 0.0,
                                             "vcol": 0.1, "score": 90.0, "age": 4}
    assert json_record("frames", frame)["arrays"] == {"image": {"dtype": "<u2",
                                                                "shape": [4, 5]}}
    blobs = Blobs(seq=0, t_source_ns=0, blobs=[Blob(1.0, 2.0, 3.0, 4, 5.0)])
    assert "blobs 1" in summary_line("blobs", blobs)
    second = Blobs(seq=9, t_source_ns=0, sensor=1, sensor_seq=4)
    assert "  sensor 1 #4  blobs 0" in summary_line("blobs", second)
    assert (json_record("blobs", second)["sensor"], json_record("blobs", second)["sensor_seq"],
            json_record("blobs", blobs)["sensor"]) == (1, 4, 0)


# ---------------------------------------------------------------------------------------------
# Live pipelines in subprocesses.


def finish(*procs):
    """Wait for every process; returns their (returncode, stdout, stderr)."""
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
            out.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            proc.kill()
    return out


def popen(*args):
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_subscribe_cli_and_example_client_read_a_live_pipeline(tmp_path):
    endpoint = f"ipc://{tmp_path}/pub"
    rec = tmp_path / "live.mcap"
    pipeline = config = chain_config(tmp_path, save_fast_ista(tmp_path), frames=24)
    pipeline = popen("-m", "pipeline", "run", config, "--publish", endpoint, "--mode", "inline",
                     "--set", "run.publish.wait_subscribers=3", "--record", rec,
                     "--record-topics", "points,tracks")
    client = popen("examples/client.py", endpoint, "--count", 14, "--timeout", TIMEOUT_S)
    subscriber = popen("-m", "pipeline", "subscribe", endpoint, "--topic", "points", "--json",
                       "--count", 10, "--timeout", TIMEOUT_S)
    to_the_end = popen("-m", "pipeline", "subscribe", endpoint, "--topic", "tracks")
    (run_rc, _, run_err), (client_rc, client_out, client_err), (sub_rc, sub_out, sub_err), (
        end_rc, end_out, end_err) = finish(pipeline, client, subscriber, to_the_end)
    assert run_rc == 0, run_err
    assert client_rc == 0, client_err
    assert sub_rc == 0, sub_err
    # Without --count or --timeout the subscriber stops at the tap's end of stream.
    assert end_rc == 0, end_err
    received, published, skipped = map(int, re.search(
        r"end of tracks: received (\d+) of (\d+) published; (\d+) skipped inside the chain, "
        r"0 lost by this subscriber", end_err).groups())
    assert received == published and received + skipped == 24  # every frame accounted for
    marker = end_out.strip().splitlines()[-1]
    assert marker.startswith(f"tracks     seq {published:>7}  t"), marker  # the EndOfStream
    recorded = {t: {m.seq: m for tt, m in read_recording(rec) if tt == t}
                for t in ("points", "tracks")}
    # The example client (no project code) decodes the tracks exactly.
    lines = client_out.strip().splitlines()
    assert len(lines) == 14
    with_tracks = 0
    for line in lines:
        seq = int(re.match(r"seq (\d+) ", line).group(1))
        tracks = recorded["tracks"][seq].tracks
        expected = "".join(f"  #{t.track_id} ({t.row:.3f}, {t.col:.3f})" for t in tracks)
        assert line.endswith(f"{len(tracks)} tracks{expected}"), line
        with_tracks += bool(tracks)
    assert with_tracks >= 3
    # The subscribe CLI prints one JSON object per points message.
    records = [json.loads(line) for line in sub_out.strip().splitlines()]
    assert [r["seq"] for r in records] == list(range(10))
    for r in records:
        assert r["topic"] == "points" and r["schema"] == "csist.Points"
        want = recorded["points"][r["seq"]].points
        assert [(p["row"], p["col"], p["window_id"]) for p in r["fields"]["points"]] == [
            (p.row, p.col, p.window_id) for p in want]


def test_external_detector_process_feeds_the_chain(tmp_path):
    frames_endpoint, blobs_endpoint = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/blobs"
    report = tmp_path / "report.json"
    weights = save_fast_ista(tmp_path)
    overrides = [
        "run.frames=12", f"run.publish.endpoint={frames_endpoint}",
        f"stages.external.endpoint={blobs_endpoint}", "stages.external.timeout_s=20",
        f"stages.unmixer.weights={weights}", "stages.source.height=72",
        "stages.source.width=72", "stages.source.groups=2",
    ]
    pipeline = popen("-m", "pipeline", "run", REPO / "configs" / "external-detector.yaml",
                     "--report", report, *[a for o in overrides for a in ("--set", o)])
    detector = popen("examples/external_detector.py", "--frames", frames_endpoint, "--blobs",
                     blobs_endpoint, "--count", 12)
    (run_rc, _, run_err), (det_rc, _, det_err) = finish(pipeline, detector)
    assert run_rc == 0, run_err
    assert det_rc == 0 and "done after 12 frames" in det_err
    data = json.loads(report.read_text())
    assert data["scores"]["external"].pop("disconnects") <= 1  # the detector may exit first
    assert data["scores"]["external"] == {"received": 12, "missed": 0, "late": 0,
                                          "too_early": 0, "evicted": 0, "invalid_blobs": 0,
                                          "decode_errors": 0, "wrong_schema": 0}
    assert data["stages"]["detector"]["msgs_in"] == 12  # the external-mode detector
    assert data["stages"]["cropper"]["msgs_out"] == 12  # every frame, the last two at the end
    assert data["outputs"]["records"]["points"] > 0  # outside blobs became unmixed points
    assert data["scores"]["scoring"]["group_detection_rate"] > 0.5


def test_point_records_survive_json(tmp_path):
    points = Points(seq=0, t_source_ns=0, points=[Point(0.1 + 0.2, -3.0, 1e-7, -1)])
    assert json.loads(json.dumps(json_record("points", points)))["fields"]["points"][0] == {
        "row": 0.1 + 0.2, "col": -3.0, "score": 1e-7, "window_id": -1}
