"""docs/wire-format.md tells the truth: a live run's tap stream and its MCAP recording are
decoded by a stand-alone decoder written from the document alone.

Nothing from this project is imported here: the chain runs as ``python -m pipeline run`` in a
subprocess, and everything below uses only the standard library, msgpack, numpy, pyzmq and
mcap, with every rule taken from the document (frames of a message, header keys, dtype
allow-list, the message and record tables, the tap's notices, the MCAP layout and the
``outputs_digest`` recipe).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import numpy as np
import zmq
from mcap.reader import make_reader

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
FRAMES = 30
FPS = 25.0  # configs/live.yaml's simulator

# ---------------------------------------------------------------------------------------------
# The document's rules.

HEADER_KEYS = {"schema", "version", "topic", "seq", "t_source_ns", "sensor", "sensor_seq",
               "stamps", "fields", "buffers"}
DTYPES = {"|u1", "<u2", "<i2", "<i4", "<f4", "<f8"}
VERSION = 3
#: schema -> (fields keys, {buffer name: allowed dtypes}) from the message table
SCHEMAS = {
    "csist.Frame": ({"truth"}, {"image": {"|u1", "<u2", "<f4"}}),
    "csist.Blobs": ({"blobs"}, {}),
    "csist.Windows": ({"windows"}, {"patches": {"<f4"}}),
    "csist.Maps": ({"windows"}, {"patches": {"<f4"}, "maps": {"<f4"}}),
    "csist.Points": ({"points"}, {}),
    "csist.Tracks": ({"tracks"}, {}),
    "csist.Stats": ({"stage", "msgs_in", "msgs_out", "dropped", "decode_errors", "seq_gaps",
                     "p50_ms", "p99_ms"}, {}),
    "csist.EndOfStream": (set(), {}),
    "csist.Skipped": ({"last"}, {}),
}
#: record -> keys, and which fields hold lists of which record (the record table)
RECORDS = {
    "TruthPoint": {"group", "row", "col", "brightness"},
    "Blob": {"row", "col", "peak", "area", "snr"},
    "WindowInfo": {"blob_id", "origin_row", "origin_col", "frame_index", "truth", "background",
                   "saturation"},
    "Point": {"row", "col", "score", "window_id"},
    "Track": {"track_id", "row", "col", "vrow", "vcol", "score", "age"},
}
RECORD_FIELDS = {"truth": "TruthPoint", "blobs": "Blob", "windows": "WindowInfo",
                 "points": "Point", "tracks": "Track"}
#: the standard chain's topics and their schemas (the topics table)
TOPICS = {"frames": "csist.Frame", "blobs": "csist.Blobs", "windows": "csist.Windows",
          "maps": "csist.Maps", "points": "csist.Points", "tracks": "csist.Tracks"}
#: field order of the digested records (the outputs_digest section)
DIGEST_ORDER = {"points": ["row", "col", "score", "window_id"],
                "tracks": ["track_id", "row", "col", "vrow", "vcol", "score", "age"]}


def check_records(field: str, records: list) -> None:
    keys = RECORDS[RECORD_FIELDS[field]]
    for record in records:
        assert isinstance(record, dict) and set(record) == keys, (field, record)
        for key, value in record.items():
            if key in RECORD_FIELDS:
                check_records(key, value)
            elif key in ("group", "area", "window_id", "track_id", "age", "blob_id",
                         "origin_row", "origin_col", "frame_index"):
                assert isinstance(value, int) and not isinstance(value, bool), (key, value)
            else:
                assert isinstance(value, (int, float)), (key, value)


def decode_header(header: dict, buffers: list[bytes]) -> tuple[dict, dict[str, np.ndarray]]:
    """A message's header checked against the document, and its arrays."""
    assert set(header) == HEADER_KEYS
    assert header["version"] == VERSION
    fields_keys, arrays_allowed = SCHEMAS[header["schema"]]
    seq, t_ns = header["seq"], header["t_source_ns"]
    assert isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
    assert isinstance(t_ns, int) and not isinstance(t_ns, bool)
    for key in ("sensor", "sensor_seq"):  # one sensor: sensor 0, sensor_seq == seq
        assert isinstance(header[key], int) and not isinstance(header[key], bool)
        assert header[key] >= 0
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in header["stamps"].items())
    assert set(header["fields"]) == fields_keys
    for field, value in header["fields"].items():
        if field in RECORD_FIELDS and value is not None:
            check_records(field, value)
    assert [b["name"] for b in header["buffers"]] == list(arrays_allowed)
    assert len(buffers) == len(header["buffers"])
    arrays = {}
    for desc, buf in zip(header["buffers"], buffers, strict=True):
        assert desc["dtype"] in DTYPES and desc["dtype"] in arrays_allowed[desc["name"]]
        assert len(desc["shape"]) <= 8
        dtype = np.dtype(desc["dtype"])
        assert len(buf) == math.prod(desc["shape"]) * dtype.itemsize
        arrays[desc["name"]] = np.frombuffer(buf, dtype=dtype).reshape(desc["shape"])
    return header, arrays


def decode_multipart(frames: list[bytes]) -> tuple[str, dict, dict[str, np.ndarray]]:
    """One ZeroMQ message: frame 0 the topic, frame 1 the msgpack header, then the buffers."""
    assert len(frames) >= 2
    topic = frames[0].decode("utf-8")
    assert len(frames[0]) <= 256
    header, arrays = decode_header(msgpack.unpackb(frames[1], raw=False), frames[2:])
    assert header["topic"] == topic
    return topic, header, arrays


def check_message(header: dict, arrays: dict[str, np.ndarray]) -> None:
    """The per-schema shapes of the message table."""
    fields = header["fields"]
    if header["schema"] == "csist.Frame":
        assert arrays["image"].ndim == 2
    if header["schema"] in ("csist.Windows", "csist.Maps"):
        n = len(fields["windows"])
        assert arrays["patches"].shape == (n, 5, 11, 11)
        if "maps" in arrays:
            assert arrays["maps"].shape == (n, 33, 33)
    if header["schema"] == "csist.Skipped":
        assert fields["last"] >= header["seq"]
    if header["schema"] == "csist.EndOfStream":
        assert header["t_source_ns"] == 0


def digest(messages: dict[str, dict[int, dict]]) -> str:
    """outputs_digest from the points and tracks messages, by the document's recipe."""
    def value(x):
        if isinstance(x, float):
            text = format(x, ".6f")
            return "0.000000" if text == "-0.000000" else text
        return x

    lines = []
    for seq in sorted(set(messages["points"]) | set(messages["tracks"])):
        parts = {"seq": seq}
        for topic, order in DIGEST_ORDER.items():
            header = messages[topic].get(seq)
            parts[topic] = (None if header is None else
                            [[value(r[k]) for k in order] for r in header["fields"][topic]])
        lines.append(json.dumps(parts, sort_keys=True, separators=(",", ":")) + "\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# The run and the checks.


def _subscribe(endpoint: str, got: list, ready: threading.Event, done: threading.Event) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        ready.set()
        ended: set[str] = set()
        while not done.is_set() and not (ended and ended >= set(TOPICS)):
            if sock.poll(100, zmq.POLLIN):
                frames = sock.recv_multipart()
                got.append(frames)
                if msgpack.unpackb(frames[1], raw=False).get("schema") == "csist.EndOfStream":
                    ended.add(frames[0].decode())
    finally:
        sock.close(linger=0)
        ctx.destroy(linger=0)


def test_tap_stream_and_recording_match_the_document(tmp_path):
    endpoint = f"ipc://{tmp_path}/tap"
    got: list = []
    ready, done = threading.Event(), threading.Event()
    listener = threading.Thread(target=_subscribe, args=(endpoint, got, ready, done))
    listener.start()
    try:
        ready.wait(5)
        run = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(REPO / "configs" / "live.yaml"),
             "--mode", "processes", "--frames", str(FRAMES), "--publish", endpoint,
             "--record", str(tmp_path / "run.mcap"), "--report", str(tmp_path / "report.json"),
             "--set", "run.publish.wait_subscribers=1", "--set", "run.queue.policy=block",
             "--set", f"stages.jsonl.config.path={tmp_path}/points.jsonl",
             "--set", f"stages.overlay.config.directory={tmp_path}/overlay"],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        listener.join(30)
    finally:
        done.set()
        listener.join(10)
    report = json.loads((tmp_path / "report.json").read_text())

    # --- the tap stream
    by_topic: dict[str, dict[int, dict]] = {t: {} for t in TOPICS}
    arrays_of: dict[str, dict[int, dict]] = {t: {} for t in TOPICS}
    published, last_seq = {}, {}
    for frames in got:
        topic, header, arrays = decode_multipart(frames)
        check_message(header, arrays)
        schema = header["schema"]
        if schema == "csist.EndOfStream":
            published[topic] = header["seq"]
        elif schema == "csist.Skipped":
            raise AssertionError(f"a lossless run announced skipped seqs on {topic}")
        elif schema != "csist.Stats":
            assert schema == TOPICS[topic], (topic, schema)
            assert header["seq"] > last_seq.get(topic, -1), "seqs increase on every topic"
            last_seq[topic] = header["seq"]
            by_topic[topic][header["seq"]] = header
            arrays_of[topic][header["seq"]] = arrays
    # every frame reached every topic, and EndOfStream counted what was published
    for topic in TOPICS:
        assert sorted(by_topic[topic]) == list(range(FRAMES)), topic
        assert published[topic] == FRAMES, topic
    for seq, header in by_topic["frames"].items():
        assert header["t_source_ns"] == round(seq * 1e9 / FPS)  # the simulator's clock
        assert (header["sensor"], header["sensor_seq"]) == (0, seq)  # one sensor
        assert header["fields"]["truth"]  # the simulator sends its truth
    for seq, header in by_topic["points"].items():
        windows = by_topic["windows"][seq]["fields"]["windows"]
        assert by_topic["maps"][seq]["fields"]["windows"] == windows
        for point in header["fields"]["points"]:
            # window_id is the index of the point's window in the same seq's windows message,
            # and patch position p is frame position origin + p
            window = windows[point["window_id"]]
            assert window["origin_row"] - 1 <= point["row"] <= window["origin_row"] + 11
            assert window["origin_col"] - 1 <= point["col"] <= window["origin_col"] + 11
        for window, patches in zip(windows, arrays_of["windows"][seq]["patches"], strict=True):
            # raw = patch + background, and the middle frame's crop is the frame's pixels
            image = arrays_of["frames"][seq]["image"]
            r, c = window["origin_row"], window["origin_col"]
            if 0 <= r <= image.shape[0] - 11 and 0 <= c <= image.shape[1] - 11:
                np.testing.assert_allclose(patches[2] + window["background"],
                                           image[r:r + 11, c:c + 11], atol=1e-3)
    points = sum(len(h["fields"]["points"]) for h in by_topic["points"].values())
    assert points > 0 and sum(len(h["fields"]["tracks"]) for h in by_topic["tracks"].values())
    # outputs_digest by the document's recipe equals the run's
    assert digest(by_topic) == report["outputs_digest"]

    # --- the recording: one msgpack blob per message, the header plus "data"
    recorded: dict[str, list[dict]] = {}
    with open(tmp_path / "run.mcap", "rb") as f:
        reader = make_reader(f)
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
        assert "config" in metadata["csist.pipeline"]
        for _schema, channel, message in reader.iter_messages():
            blob = msgpack.unpackb(message.data, raw=False)
            data = blob.pop("data")
            header, arrays = decode_header(blob, data)
            check_message(header, arrays)
            assert channel.topic == header["topic"]
            assert channel.metadata["schema"] == header["schema"]
            assert message.log_time == message.publish_time == max(header["t_source_ns"], 0)
            assert message.sequence == header["seq"] % 2**32
            recorded.setdefault(header["topic"], []).append(header)
    for topic in TOPICS:
        assert [h["seq"] for h in recorded[topic]] == list(range(FRAMES))
        assert [h["fields"] for h in recorded[topic]] == [by_topic[topic][s]["fields"]
                                                          for s in range(FRAMES)]
