"""A seeded fuzz campaign against both decoders: whatever the bytes, only DecodeError.

12,000 hostile multipart messages and 12,000 hostile records built from valid encodings of
every message type: random bytes, bit flips, truncations, hostile header values (huge and
negative ints, NaN, deep nesting, long strings, wrong types), hostile buffer descriptors (huge
shapes, wrong dtypes), dropped or extra buffers, through :func:`decode` and
:func:`decode_record`.
"""

from __future__ import annotations

import collections

import msgpack
import numpy as np

from pipeline.wire.codec import DecodeError, decode, decode_record, encode, encode_record
from stages.messages import (
    MESSAGE_TYPES,
    Blob,
    Blobs,
    EndOfStream,
    Frame,
    Maps,
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

INFO = WindowInfo(blob_id=1, origin_row=2, origin_col=3, frame_index=4,
                  truth=(TruthPoint(group=0, row=1.0, col=2.0, brightness=230.0),))
PATCHES = np.zeros((1, 5, 11, 11), np.float32)
SAMPLES = [
    Frame(seq=1, t_source_ns=2, image=np.zeros((4, 4), np.uint8),
          truth=(TruthPoint(group=0, row=1.0, col=2.0, brightness=230.0),)),
    Blobs(seq=1, t_source_ns=2, blobs=(Blob(row=1.0, col=2.0, peak=3.0, area=4, snr=5.0),)),
    Windows(seq=1, t_source_ns=2, windows=(INFO,), patches=PATCHES),
    Maps(seq=1, t_source_ns=2, windows=(INFO,), patches=PATCHES,
         maps=np.zeros((1, 33, 33), np.float32)),
    Points(seq=1, t_source_ns=2, points=(Point(row=1.0, col=2.0, score=3.0, window_id=0),)),
    Tracks(seq=1, t_source_ns=2, tracks=(Track(track_id=1, row=1.0, col=2.0, vrow=0.0,
                                                vcol=0.0, score=1.0, age=3),)),
    Stats(seq=1, t_source_ns=2, stage="x", msgs_in=1, msgs_out=1, dropped=0, decode_errors=0,
          seq_gaps=0, p50_ms=1.0, p99_ms=2.0),
    EndOfStream(seq=1, t_source_ns=2),
    Skipped(seq=1, t_source_ns=2, last=3),
]
HEADER_KEYS = ("schema", "version", "topic", "seq", "t_source_ns", "stamps", "fields", "buffers")


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [2**63, 2**64 - 1, -(2**63), -1, float("nan"), float("inf"), None, True, "x" * 5000,
           b"\xff" * 40, nested(1020), {"a": nested(600)}, [], {}, [{"name": 1}], 1.5]
SHAPES = [[2**63, 0], [2**31, 0], [-1, 4], [1] * 9, [0.5], ["4"], [], [10**6, 10**6], [True]]


def hostile_header(rng: np.random.Generator, header: dict, buffers: list[bytes]):
    """A hostile value at a header key, in a buffer descriptor or inside the fields."""
    header, buffers = dict(header), list(buffers)
    kind = int(rng.integers(3))
    if kind == 0:
        header[HEADER_KEYS[int(rng.integers(len(HEADER_KEYS)))]] = \
            HOSTILE[int(rng.integers(len(HOSTILE)))]
    elif kind == 1 and header["buffers"]:
        desc = dict(header["buffers"][0])
        if rng.random() < 0.7:
            desc["shape"] = SHAPES[int(rng.integers(len(SHAPES)))]
        else:
            desc["dtype"] = ["<f2", ">f4", "O", "|V8", 3, "<f8"][int(rng.integers(6))]
        header["buffers"] = [desc, *header["buffers"][1:]]
        if rng.random() < 0.5:  # the bytes of the claimed (empty) shape
            buffers = [b""] * len(buffers)
    elif header["fields"]:
        fields = dict(header["fields"])
        fields[list(fields)[int(rng.integers(len(fields)))]] = \
            HOSTILE[int(rng.integers(len(HOSTILE)))]
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


def variants(rng: np.random.Generator, msg) -> tuple[list[bytes], bytes]:
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


def test_every_decoder_raises_only_decode_error_whatever_the_bytes():
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    rng = np.random.default_rng(2026)
    outcomes: collections.Counter = collections.Counter()
    escapes = []
    for i in range(12_000):
        frames, record = variants(rng, SAMPLES[i % len(SAMPLES)])
        for fn, data in ((decode, frames), (decode_record, record)):
            try:
                fn(data)
                outcomes["decoded"] += 1
            except DecodeError:
                outcomes["DecodeError"] += 1
            except Exception as exc:  # the defect this test exists to find
                escapes.append(f"{fn.__name__}: {type(exc).__name__}: {str(exc)[:80]}")
    assert escapes == []
    assert outcomes["DecodeError"] > 15_000 and outcomes["decoded"] > 500


def test_error_messages_stay_short_whatever_the_value():
    frames = [bytes(f) for f in encode(SAMPLES[0], "t")]
    header = msgpack.unpackb(frames[1])
    for value in ("x" * 100_000, nested(1020), list(range(10_000))):
        header["schema"] = value
        try:
            decode([frames[0], msgpack.packb(header), *frames[2:]])
        except DecodeError as exc:
            assert "unknown schema" in str(exc) and len(str(exc)) < 400
        else:
            raise AssertionError("a hostile schema decoded")


def test_a_record_whose_header_would_explode_in_memory_is_refused_first():
    """30 MiB of point records in a record's header would unpack into ~600,000 dicts (several
    hundred MB); the header is measured without building objects and refused."""
    import tracemalloc

    record = msgpack.unpackb(encode_record(SAMPLES[4], "points"))
    record["fields"] = {"points": [{"row": 1.5, "col": 2.5, "score": 3.5, "window_id": 0}]
                        * 600_000}
    data = msgpack.packb(record)
    tracemalloc.start()
    try:
        decode_record(data)
    except DecodeError as exc:
        assert "header bytes besides its data buffers, over the limit" in str(exc)
    else:
        raise AssertionError("the oversized record header decoded")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 2 * len(data)  # the bytes themselves, not an object per entry
