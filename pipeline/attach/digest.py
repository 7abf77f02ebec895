"""``outputs_digest``: one sha256 that says whether two runs produced the same points and tracks.

Canonical serialisation (documented in ``docs/wire-format.md``, "outputs_digest"): one line
per frame seq, in increasing seq order, each the compact JSON (sorted keys, separators ``,``
and ``:``) of ``{"seq": SEQ, "<topic>": RECORDS, ...}`` for every digested topic (``points``
and ``tracks``), followed by ``\\n``. RECORDS lists the message's records in the order the
stage emitted them, each as the list of its field values in declaration order (e.g. a Point is
``[row, col, score, window_id]``); a float is the string ``format(x, ".6f")`` (1e-6 px), with
``-0.000000`` written ``0.000000``; an int stays a JSON number; a topic without a message for
that seq is ``null``. The digest is the sha256 of the UTF-8 concatenation of the lines.

A line is hashed as soon as every digested topic has delivered its seq (each topic arrives in
seq order, so in a lossless run lines come in seq order); seqs still incomplete at the end of
the stream (a lossy run) are hashed last, in seq order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from stages.base import TopicSink
from stages.messages import Message

FLOAT_FORMAT = ".6f"


@dataclasses.dataclass(frozen=True)
class DigestConfig:
    """Options of :class:`OutputsDigest`.

    Attributes
    ----------
    topics : tuple of str
        Digested topics (each carries a message type with one records field).
    """

    topics: tuple[str, ...] = ("points", "tracks")


def canonical_value(value: Any) -> Any:
    """A record field as it enters the digest (floats as fixed-point strings)."""
    if isinstance(value, float):
        text = format(value, FLOAT_FORMAT)
        return format(0.0, FLOAT_FORMAT) if text == "-" + format(0.0, FLOAT_FORMAT) else text
    if isinstance(value, tuple):
        return [canonical_record(v) for v in value]
    return value


def canonical_record(record: Any) -> list[Any]:
    """A record (dataclass) as the list of its canonical field values in declaration order."""
    return [canonical_value(getattr(record, f.name)) for f in dataclasses.fields(record)]


def canonical_records(msg: Message) -> list[list[Any]]:
    """The records of a message with exactly one records field (Points, Tracks, Blobs…)."""
    fields = list(msg.RECORDS)
    if len(fields) != 1:
        raise TypeError(f"{type(msg).__name__} has records fields {fields}; the digest needs "
                        f"exactly one")
    return [canonical_record(r) for r in getattr(msg, fields[0]) or ()]


def frame_line(seq: int, parts: dict[str, list | None]) -> bytes:
    """The canonical line of one frame seq (see the module docstring)."""
    return (json.dumps({"seq": seq, **parts}, sort_keys=True, separators=(",", ":"))
            + "\n").encode()


class OutputsDigest(TopicSink):
    """Sink hashing the records of its topics frame by frame (see the module docstring)."""

    Config = DigestConfig

    def __init__(self, config: DigestConfig | None = None) -> None:
        super().__init__(config)
        self._hash = hashlib.sha256()
        self._pending: dict[int, dict[str, list]] = {}
        self.frames = 0
        self.records = dict.fromkeys(self.config.topics, 0)

    def process_topic(self, topic: str, msg: Message) -> Iterable[Message]:
        if topic not in self.records:
            raise ValueError(f"the digest reads {list(self.records)}, got a message on {topic!r}")
        records = canonical_records(msg)
        self.records[topic] += len(records)
        parts = self._pending.setdefault(msg.seq, {})
        parts[topic] = records
        if len(parts) == len(self.records):
            self._add(msg.seq, self._pending.pop(msg.seq))
        return ()

    def _add(self, seq: int, parts: dict[str, list]) -> None:
        self._hash.update(frame_line(seq, {t: parts.get(t) for t in self.records}))
        self.frames += 1

    def flush(self) -> Iterable[Message]:
        for seq in sorted(self._pending):
            self._add(seq, self._pending[seq])
        self._pending.clear()
        return ()

    def summary(self) -> dict[str, Any]:
        return {"sha256": self._hash.hexdigest(), "frames": self.frames,
                "records": dict(self.records)}
