"""A seeded fuzz campaign against the decoders: ``python -m pipeline fuzz --messages N``.

Each round takes a valid encoding of one message type (every type in turn) and makes one
hostile multipart message for :func:`~pipeline.wire.codec.decode` and one hostile record
for :func:`~pipeline.wire.codec.decode_record`: random bytes, bit flips, truncations, dropped
or extra buffers, hostile header values (huge and negative ints, NaN, deep nesting, long
strings, wrong types) and hostile buffer descriptors (huge or negative shapes, dtypes off
the allow-list). The contract under test: whatever the bytes, a decoder returns a message or
raises :class:`~pipeline.wire.codec.DecodeError`, in bounded time and memory. Anything else
is an *escape*. CI runs 12,000 rounds (``tests/test_codec_fuzz.py``).
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from pipeline.wire.codec import (
    HEADER_KEYS,
    DecodeError,
    decode,
    decode_record,
    encode,
    encode_record,
)
from stages.messages import (
    Blob,
    Blobs,
    EndOfStream,
    Frame,
    Maps,
    Message,
    Point,
    Points,
    Skipped,
    Stats,
    Track,
    Tracks,
    TruthPoint,
    WindowInfo,
    Windows,
)

_INFO = WindowInfo(blob_id=1, origin_row=2, origin_col=3, frame_index=4,
                   truth=(TruthPoint(group=0, row=1.0, col=2.0, brightness=230.0),))
_PATCHES = np.zeros((1, 5, 11, 11), np.float32)

#: One valid message of every type: the seeds the hostile variants are made from.
SAMPLES: list[Message] = [
    Frame(seq=1, t_source_ns=2, image=np.zeros((4, 4), np.uint8),
          truth=(TruthPoint(group=0, row=1.0, col=2.0, brightness=230.0),)),
    Blobs(seq=1, t_source_ns=2, blobs=(Blob(row=1.0, col=2.0, peak=3.0, area=4, snr=5.0),)),
    Windows(seq=1, t_source_ns=2, windows=(_INFO,), patches=_PATCHES),
    Maps(seq=1, t_source_ns=2, windows=(_INFO,), patches=_PATCHES,
         maps=np.zeros((1, 33, 33), np.float32)),
    Points(seq=1, t_source_ns=2, points=(Point(row=1.0, col=2.0, score=3.0, window_id=0),)),
    Tracks(seq=1, t_source_ns=2, tracks=(Track(track_id=1, row=1.0, col=2.0, vrow=0.0,
                                                vcol=0.0, score=1.0, age=3),)),
    Stats(seq=1, t_source_ns=2, stage="x", msgs_in=1, msgs_out=1, dropped=0, decode_errors=0,
          seq_gaps=0, p50_ms=1.0, p99_ms=2.0),
    EndOfStream(seq=1, t_source_ns=2),
    Skipped(seq=1, t_source_ns=2, last=3),
]


def nested(depth: int) -> list:
    """A list nested ``depth`` deep."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [2**63, 2**64 - 1, -(2**63), -1, float("nan"), float("inf"), None, True, "x" * 5000,
           b"\xff" * 40, nested(1020), {"a": nested(600)}, [], {}, [{"name": 1}], 1.5]
SHAPES = [[2**63, 0], [2**31, 0], [-1, 4], [1] * 9, [0.5], ["4"], [], [10**6, 10**6], [True]]


def _pick(rng: np.random.Generator, items: list) -> Any:
    return items[int(rng.integers(len(items)))]


def hostile_header(rng: np.random.Generator, header: dict, buffers: list[bytes]):
    """A hostile value at a header key, in a buffer descriptor or inside the fields."""
    header, buffers = dict(header), list(buffers)
    kind = int(rng.integers(3))
    if kind == 0:
        header[_pick(rng, list(HEADER_KEYS))] = _pick(rng, HOSTILE)
    elif kind == 1 and header["buffers"]:
        desc = dict(header["buffers"][0])
        if rng.random() < 0.7:
            desc["shape"] = _pick(rng, SHAPES)
        else:
            desc["dtype"] = _pick(rng, ["<f2", ">f4", "O", "|V8", 3, "<f8"])
        header["buffers"] = [desc, *header["buffers"][1:]]
        if rng.random() < 0.5:  # the bytes of the claimed (empty) shape
            buffers = [b""] * len(buffers)
    elif header["fields"]:
        fields = dict(header["fields"])
        fields[_pick(rng, list(fields))] = _pick(rng, HOSTILE)
        header["fields"] = fields
    else:
        buffers.append(b"extra")
    return header, buffers


def damage(rng: np.random.Generator, blob: bytes) -> bytes:
    """Random bytes, bit flips or a truncation of ``blob``."""
    kind = int(rng.integers(3))
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 300)))
    if kind == 1:
        b = bytearray(blob)
        for _ in range(int(rng.integers(1, 8))):
            if b:
                b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        return bytes(b)
    return blob[: int(rng.integers(0, len(blob) + 1))]


def variants(rng: np.random.Generator, msg: Message) -> tuple[list[bytes], bytes]:
    """One hostile multipart encoding and one hostile record of ``msg``."""
    frames = [bytes(f) for f in encode(msg, "t")]
    header, buffers = msgpack.unpackb(frames[1]), frames[2:]
    if rng.random() < 0.5:
        header, buffers = hostile_header(rng, header, buffers)
        frames = [frames[0], msgpack.packb(header), *buffers]
        record = msgpack.packb({**header, "data": buffers})
    else:
        frames = [damage(rng, f) if rng.random() < 0.5 else f for f in frames]
        if rng.random() < 0.2:
            frames = frames[: int(rng.integers(0, len(frames) + 1))]
        record = damage(rng, encode_record(msg, "t"))
    return frames, record


def campaign(messages: int, seed: int = 2026) -> dict[str, Any]:
    """Run ``messages`` rounds (each: one multipart message and one record).

    Returns
    -------
    dict
        ``outcomes`` (decoded / DecodeError / escape counts), ``escapes`` (the first 20, as
        "decoder: Exception: message"), ``slowest_ms`` (longest single decode),
        ``seconds``, ``max_rss_mb`` (peak resident memory of this process), ``seed``.
    """
    rng = np.random.default_rng(seed)
    outcomes: collections.Counter = collections.Counter()
    escapes: list[str] = []
    slowest = 0.0
    start = time.perf_counter()
    for i in range(messages):
        frames, record = variants(rng, SAMPLES[i % len(SAMPLES)])
        for fn, data in ((decode, frames), (decode_record, record)):
            tic = time.perf_counter()
            try:
                fn(data)
                outcomes["decoded"] += 1
            except DecodeError:
                outcomes["DecodeError"] += 1
            except Exception as exc:  # the defect a campaign exists to find
                outcomes["escape"] += 1
                if len(escapes) < 20:
                    escapes.append(f"{fn.__name__}: {type(exc).__name__}: {str(exc)[:80]}")
            slowest = max(slowest, time.perf_counter() - tic)
    return {"messages": messages, "seed": seed, "outcomes": dict(outcomes),
            "escapes": escapes, "slowest_ms": 1e3 * slowest,
            "seconds": time.perf_counter() - start,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=100_000,
                        help="rounds (each: one multipart message and one record)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", help="write the result as JSON here")


def main(args: argparse.Namespace) -> int:
    """Run the campaign; exit 1 when anything but DecodeError escaped a decoder."""
    result = campaign(args.messages, args.seed)
    print(f"{2 * result['messages']} hostile inputs in {result['seconds']:.1f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items()))
          + f"; slowest decode {result['slowest_ms']:.1f} ms, peak RSS "
            f"{result['max_rss_mb']:.0f} MB")
    for line in result["escapes"]:
        print(f"escape: {line}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["escapes"] else 0
