"""``python -m pipeline subscribe``: attach to a running pipeline's tap and print its messages.

One line per message: a summary (topic, seq, source time, then each field: arrays as shape and
dtype, record lists as counts), or with ``--json`` one JSON object per line::

    {"topic": "tracks", "schema": "csist.Tracks", "version": 3, "seq": 12,
     "t_source_ns": 480000000, "sensor": 0, "sensor_seq": 12, "stamps": {...},
     "fields": {"tracks": [{"track_id": 0, "row": 120.41, ...}]},
     "arrays": {"image": {"dtype": "<f4", "shape": [256, 256]}}}

Arrays are described, not dumped (a frame is hundreds of kB). Malformed messages are counted
and reported on stderr, never fatal. Attaching is best-effort: messages sent before the
subscription reached the pipeline are not seen (see :mod:`pipeline.attach.tap`).

The tap's notices are printed like messages: ``csist.Skipped`` (seqs dropped inside the
chain), ``csist.Stats`` (its heartbeat while the chain is idle) and ``csist.EndOfStream``
(the run ended; ``seq`` = messages published on the topic).
The subscriber stops once every topic it asked for (without ``--topic``: every topic it has
seen) has ended, and says on stderr how many messages of each it received and how many the
tap published, announced gaps, and gaps it lost itself.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import zmq

from pipeline.run.report import json_safe
from pipeline.wire.codec import DEFAULT_LIMITS, DecodeError, decode
from pipeline.wire.curve import connect_client
from stages.messages import FRAME_FIELDS, EndOfStream, Message, Skipped, Stats, frame_header

POLL_MS = 100


def _field_names(msg: Message) -> list[str]:
    header = {*FRAME_FIELDS, "stamps"}
    return [f.name for f in dataclasses.fields(msg) if f.name not in header]


def summary_line(topic: str, msg: Message) -> str:
    """One human-readable line describing ``msg``."""
    parts = [f"{topic:<10} seq {msg.seq:>7}  t {msg.t_source_ns / 1e9:11.3f} s"]
    if msg.sensor or msg.sensor_seq != msg.seq:  # a chain of several sensors
        parts.append(f"sensor {msg.sensor} #{msg.sensor_seq}")
    for name in _field_names(msg):
        value = getattr(msg, name)
        if isinstance(value, np.ndarray):
            parts.append(f"{name} {'x'.join(map(str, value.shape))} {value.dtype.name}")
        elif name in msg.RECORDS:
            parts.append(f"{name} {'-' if value is None else len(value)}")
        elif isinstance(value, float):
            parts.append(f"{name} {value:.3g}")
        else:
            parts.append(f"{name} {value}")
    return "  ".join(parts)


def json_record(topic: str, msg: Message) -> dict[str, Any]:
    """``msg`` as plain JSON-able data (arrays as dtype and shape only)."""
    fields, arrays = {}, {}
    for name in _field_names(msg):
        value = getattr(msg, name)
        if isinstance(value, np.ndarray):
            arrays[name] = {"dtype": value.dtype.str, "shape": list(value.shape)}
        elif name in msg.RECORDS and value is not None:
            fields[name] = [dataclasses.asdict(r) for r in value]
        else:
            fields[name] = value
    return json_safe({"topic": topic, "schema": msg.SCHEMA, "version": msg.VERSION,
                       **frame_header(msg),
                       "stamps": dict(msg.stamps), "fields": fields, "arrays": arrays})


class _Tally:
    """Per topic: messages received, seqs the tap announced as skipped, seqs lost here, and
    the tap's count at the end of the stream."""

    def __init__(self) -> None:
        self.received: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.lost: dict[str, int] = {}
        self.published: dict[str, int] = {}
        self._next: dict[str, int] = {}

    def add(self, topic: str, msg: Message) -> None:
        if isinstance(msg, Stats):  # the tap's heartbeat: its seq is its own count
            return
        if isinstance(msg, EndOfStream):
            self.published[topic] = msg.seq
            return
        expected = self._next.get(topic)
        if isinstance(msg, Skipped):
            self.skipped[topic] = self.skipped.get(topic, 0) + msg.last - msg.seq + 1
            last = msg.last
        else:
            self.received[topic] = self.received.get(topic, 0) + 1
            last = msg.seq
        if expected is not None and msg.seq > expected:
            self.lost[topic] = self.lost.get(topic, 0) + msg.seq - expected
        self._next[topic] = last + 1

    def all_ended(self, wanted: set[str]) -> bool:
        """Whether every wanted topic (none: every topic seen) has had its EndOfStream."""
        topics = wanted or set(self.received) | set(self.published)
        return bool(topics) and topics <= set(self.published)

    def report(self) -> list[str]:
        """One line per topic that ended: received, published, announced and own losses."""
        return [f"end of {topic}: received {self.received.get(topic, 0)} of {n} published; "
                f"{self.skipped.get(topic, 0)} skipped inside the chain, "
                f"{self.lost.get(topic, 0)} lost by this subscriber"
                for topic, n in sorted(self.published.items())]


def subscribe(
    endpoint: str,
    topics: Sequence[str] = (),
    as_json: bool = False,
    count: int | None = None,
    timeout_s: float | None = None,
    server_key: str | Path | None = None,
    client_secret: str | Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print the messages published on ``endpoint`` until ``count`` or ``timeout_s``.

    Parameters
    ----------
    endpoint : str
        The pipeline's ``run.publish.endpoint``.
    topics : sequence of str
        Topics to print (exact names); empty = all.
    as_json : bool
        JSON lines instead of summary lines.
    count : int, optional
        Stop after this many messages.
    timeout_s : float, optional
        Stop after this long without a message.
    server_key, client_secret : path, optional
        CURVE: the pipeline's public key and this client's key pair.

    Returns
    -------
    int
        Exit code: 0 when ``count`` messages (or, without ``count``, at least one) were
        printed, 1 otherwise.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    printed = errors = 0
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, DEFAULT_LIMITS.max_total_bytes)
        if server_key is not None or client_secret is not None:
            connect_client(sock, server_key, client_secret)
        for topic in topics or ("",):
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(endpoint)
        wanted = set(topics)
        tally = _Tally()
        last = time.monotonic()
        while (count is None or printed < count) and not tally.all_ended(wanted):
            if not sock.poll(POLL_MS, zmq.POLLIN):
                if timeout_s is not None and time.monotonic() - last > timeout_s:
                    break
                continue
            last = time.monotonic()
            frames = sock.recv_multipart()
            try:
                msg = decode(frames)
            except DecodeError as exc:
                errors += 1
                print(f"malformed message dropped: {exc}", file=sys.stderr)
                continue
            topic = bytes(frames[0]).decode()
            if wanted and topic not in wanted:  # a prefix match of another topic
                continue
            tally.add(topic, msg)
            text = json.dumps(json_record(topic, msg)) if as_json else summary_line(topic, msg)
            print(text, file=out, flush=True)
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(linger=0)
        ctx.term()
    for line in tally.report():
        print(line, file=sys.stderr)
    if errors:
        print(f"{errors} malformed message(s) dropped", file=sys.stderr)
    return 0 if (printed >= count if count is not None else printed > 0) else 1
