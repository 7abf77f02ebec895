"""Wire codec: property-based round trips of every message type, and every malformed input
raising DecodeError (never anything else)."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.wire.codec import (
    DTYPES,
    DecodeError,
    EncodeError,
    Limits,
    WireMessage,
    decode,
    decode_record,
    encode,
    encode_record,
    peek,
)
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
    frame_header,
)

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

ints = st.integers(-(2**62), 2**62)
seqs = st.integers(0, 2**62)
floats = st.floats(allow_nan=False, width=64)
stamps = st.dictionaries(st.text(max_size=12), ints, max_size=4)


def records(cls, **overrides):
    """Strategy for a record dataclass: ints for int fields, floats for float fields."""
    kinds = {"int": ints, "float": floats, "str": st.text(max_size=8)}
    fields = {f.name: overrides.get(f.name, kinds.get(str(f.type)))
              for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


truths = st.lists(records(TruthPoint), max_size=4).map(tuple)
window_infos = records(WindowInfo, truth=truths)


sensors = st.integers(0, 2**31)


def header(cls):
    return {"seq": seqs, "t_source_ns": ints, "stamps": stamps, "sensor": sensors,
            "sensor_seq": seqs}


@st.composite
def windows_like(draw, cls):
    infos = tuple(draw(st.lists(window_infos, max_size=3)))
    n = len(infos)
    fields = {"windows": infos, "patches": draw(hnp.arrays(np.float32, (n, 5, 11, 11)))}
    if cls is Maps:
        fields["maps"] = draw(hnp.arrays(np.float32, (n, 33, 33)))
    return cls(**{k: draw(v) for k, v in header(cls).items()}, **fields)


MESSAGES = {
    Frame: st.builds(
        Frame, **header(Frame),
        image=st.sampled_from([np.uint8, np.uint16, np.float32]).flatmap(
            lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=2, max_dims=2, max_side=9))),
        truth=st.none() | truths,
    ),
    Blobs: st.builds(Blobs, **header(Blobs), blobs=st.lists(records(Blob), max_size=5)),
    Windows: windows_like(Windows),
    Maps: windows_like(Maps),
    Points: st.builds(Points, **header(Points), points=st.lists(records(Point), max_size=5)),
    Tracks: st.builds(Tracks, **header(Tracks), tracks=st.lists(records(Track), max_size=5)),
    Stats: st.builds(Stats, **header(Stats), stage=st.text(max_size=10), msgs_in=ints,
                     p50_ms=st.floats(allow_nan=True)),
    EndOfStream: st.builds(EndOfStream, **header(EndOfStream)),
    Skipped: st.builds(lambda seq, gap, t, stamps, sensor: Skipped(
                           seq=seq, last=seq + gap, t_source_ns=t, stamps=stamps, sensor=sensor),
                       seqs, st.integers(0, 100), ints, stamps, sensors),
}


def assert_same(a, b):
    """Field-by-field equality: arrays by dtype, shape and bits; NaN equals NaN."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.tobytes() == y.tobytes()
        elif isinstance(x, float) and math.isnan(x):
            assert math.isnan(y)
        else:
            assert x == y, f.name


def test_every_message_type_has_a_strategy():
    assert set(MESSAGES) == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
def test_round_trip(cls):
    @SETTINGS
    @given(MESSAGES[cls])
    def check(msg):
        frames = encode(msg)
        assert bytes(frames[0]) == cls.TOPIC.encode()
        assert_same(decode(frames), msg)
        # Over a real socket the frames arrive as bytes: same result.
        assert_same(decode([bytes(f) for f in frames]), msg)

    check()


def test_header_layout_is_the_documented_one():
    msg = Frame(seq=7, t_source_ns=280_000_000, stamps={"source.out": 5}, sensor=1,
                sensor_seq=3, image=np.arange(6, dtype=np.uint16).reshape(2, 3),
                truth=(TruthPoint(group=1, row=0.5, col=1.25, brightness=230.0),))
    topic, head, buf = encode(msg)
    assert topic == b"frames"
    assert msgpack.unpackb(head) == {
        "schema": "csist.Frame", "version": 3, "topic": "frames", "seq": 7,
        "t_source_ns": 280_000_000, "sensor": 1, "sensor_seq": 3, "stamps": {"source.out": 5},
        "fields": {"truth": [{"group": 1, "row": 0.5, "col": 1.25, "brightness": 230.0}]},
        "buffers": [{"name": "image", "dtype": "<u2", "shape": [2, 3]}],
    }
    assert bytes(buf) == np.arange(6, dtype="<u2").tobytes()


def test_peek_checks_the_header_and_keeps_the_frames_for_forwarding():
    msg = Frame(seq=7, t_source_ns=280_000_000, stamps={"source.out": 5},
                image=np.arange(6, dtype=np.uint16).reshape(2, 3))
    frames = [bytes(f) for f in encode(msg)]
    got = peek(frames)
    assert isinstance(got, WireMessage) and got.frames == tuple(frames)
    assert (got.schema, got.seq, got.t_source_ns, got.stamps) == (
        "csist.Frame", 7, 280_000_000, {"source.out": 5})
    end = peek(encode(EndOfStream(seq=3, t_source_ns=0)))  # decoded: receivers act on it
    assert isinstance(end, EndOfStream) and end.seq == 3
    header = msgpack.unpackb(frames[1])
    for key, value in (("seq", -1), ("version", 1), ("schema", "csist.Nope"), ("sensor", -1)):
        bad = msgpack.packb({**header, key: value})
        with pytest.raises(DecodeError):
            peek([frames[0], bad, frames[2]])
    with pytest.raises(DecodeError, match="differs from frame 0"):
        peek([b"blobs", *frames[1:]])


def test_external_client_message_decodes():
    """What a detector written in another language would send: plain msgpack + no buffers."""
    head = msgpack.packb({
        "schema": "csist.Blobs", "version": 3, "topic": "blobs", "seq": 3, "t_source_ns": 0,
        "sensor": 0, "sensor_seq": 3, "stamps": {}, "buffers": [],
        "fields": {"blobs": [{"row": 10, "col": 20.5, "peak": 200.0, "area": 4, "snr": 9.0}]},
    })
    msg = decode([b"blobs", head])
    assert msg.blobs == (Blob(row=10.0, col=20.5, peak=200.0, area=4, snr=9.0),)
    assert isinstance(msg.blobs[0].row, float)


def test_numpy_scalars_are_converted_and_big_endian_is_swapped():
    msg = Points(seq=np.int64(2), t_source_ns=np.int64(9), points=[
        Point(row=np.float32(1.5), col=np.float64(2.0), score=np.float32(0.5),
              window_id=np.int32(4))])
    out = decode(encode(msg))
    assert out.points == (Point(1.5, 2.0, 0.5, 4),) and type(out.points[0].window_id) is int
    image = np.arange(4, dtype=">u2").reshape(2, 2)
    frame = decode(encode(Frame(seq=0, t_source_ns=0, image=image)))
    assert frame.image.dtype.str == "<u2" and np.array_equal(frame.image, image)


@pytest.mark.parametrize("bad", [
    Points(seq=0, t_source_ns=0, points=[Point(row="a", col=0.0, score=0.0)]),
    Points(seq=0, t_source_ns=0, points=[Point(row=0.0, col=0.0, score=0.0, window_id=1.5)]),
])
def test_unencodable_fields_raise_encode_error(bad):
    with pytest.raises(EncodeError, match="Point"):
        encode(bad)


# ---------------------------------------------------------------------------------------------
# Malformed input.

def valid_windows():
    return Windows(seq=4, t_source_ns=1, windows=[WindowInfo(1, 2, 3, 4)],
                   patches=np.ones((1, 5, 11, 11), np.float32))


def with_header(frames, **changes):
    head = msgpack.unpackb(frames[1])
    head.update(changes)
    return [frames[0], msgpack.packb(head), *frames[2:]]


def bad_frames():
    good = [bytes(f) for f in encode(valid_windows())]
    head = msgpack.unpackb(good[1])
    desc = head["buffers"][0]
    return {
        "empty": [],
        "one frame": good[:1],
        "header not msgpack": [good[0], b"\xc1\x00\xff"],
        "header not a map": [good[0], msgpack.packb([1, 2])],
        "header truncated": [good[0], good[1][:-3], good[2]],
        "topic not utf8": [b"\xff\xfe", *good[1:]],
        "topic mismatch": [b"frames", *good[1:]],
        "unknown schema": with_header(good, schema="csist.Nope"),
        "schema not str": with_header(good, schema=3),
        "wrong version": with_header(good, version=4),
        "version bool": with_header(good, version=True),
        "negative seq": with_header(good, seq=-1),
        "seq float": with_header(good, seq=1.0),
        "negative sensor": with_header(good, sensor=-1),
        "sensor bool": with_header(good, sensor=True),
        "sensor_seq float": with_header(good, sensor_seq=2.0),
        "negative sensor_seq": with_header(good, sensor_seq=-3),
        "stamps int keys": [good[0], msgpack.packb({**head, "stamps": {1: 2}}), good[2]],
        "stamps str values": with_header(good, stamps={"a": "b"}),
        "missing key": [good[0], msgpack.packb({k: v for k, v in head.items() if k != "fields"}),
                        good[2]],
        "extra key": with_header(good, extra=1),
        "buffer truncated": [good[0], good[1], good[2][:-1]],
        "buffer too long": [good[0], good[1], good[2] + b"\0"],
        "buffer missing": good[:2],
        "extra buffer": [*good, b"\0"],
        "dtype object": with_header(good, buffers=[{**desc, "dtype": "|O"}]),
        "dtype big endian": with_header(good, buffers=[{**desc, "dtype": ">f4"}]),
        "dtype complex": with_header(good, buffers=[{**desc, "dtype": "<c8"}]),
        "dtype not str": with_header(good, buffers=[{**desc, "dtype": 4}]),
        "shape negative": with_header(good, buffers=[{**desc, "shape": [-1, 5, 11, 11]}]),
        "shape too deep": with_header(good, buffers=[{**desc, "shape": [1] * 9}]),
        "shape not list": with_header(good, buffers=[{**desc, "shape": "1,5,11,11"}]),
        "wrong shape same bytes": with_header(good, buffers=[{**desc, "shape": [5, 1, 11, 11]}]),
        "buffer renamed": with_header(good, buffers=[{**desc, "name": "maps"}]),
        "fields missing": with_header(good, fields={}),
        "fields unknown": with_header(good, fields={**head["fields"], "x": 1}),
        "record not a map": with_header(good, fields={"windows": [[1, 2, 3, 4, []]]}),
        "record wrong type": with_header(good, fields={"windows": [
            {**head["fields"]["windows"][0], "blob_id": "one"}]}),
        "record float for int": with_header(good, fields={"windows": [
            {**head["fields"]["windows"][0], "origin_row": 2.0}]}),
        "count mismatch": with_header(good, fields={"windows": []}),
        "ext type": with_header(good, fields={"windows": msgpack.ExtType(1, b"x")}),
    }


@pytest.mark.parametrize("name", list(bad_frames()))
def test_malformed_frames_raise_decode_error(name):
    with pytest.raises(DecodeError):
        decode(bad_frames()[name])


def test_decode_error_names_the_problem():
    with pytest.raises(DecodeError, match=r"dtype '\|O' is not allowed"):
        decode(bad_frames()["dtype object"])
    with pytest.raises(DecodeError, match="unknown schema 'csist.Nope'; known"):
        decode(bad_frames()["unknown schema"])
    with pytest.raises(DecodeError, match="has 2419 bytes but <f4 \\[1, 5, 11, 11\\] needs 2420"):
        decode(bad_frames()["buffer truncated"])


def test_a_bad_record_is_named_by_its_index_and_ints_become_floats():
    blobs = Blobs(seq=1, t_source_ns=2, blobs=tuple(
        Blob(row=float(i), col=2.0, peak=9.0, area=3, snr=4.0) for i in range(3)))
    frames = [bytes(f) for f in encode(blobs)]
    head = msgpack.unpackb(frames[1])
    head["fields"]["blobs"][0]["row"] = 7  # an int where a float is expected: accepted
    assert decode([frames[0], msgpack.packb(head)]).blobs[0].row == 7.0
    head["fields"]["blobs"][2]["area"] = True  # a bool is not an int
    with pytest.raises(DecodeError, match=r"blobs\[2\]: area must be int, got bool"):
        decode([frames[0], msgpack.packb(head)])
    head["fields"]["blobs"][2] = {"row": 1.0}
    with pytest.raises(DecodeError, match=r"blobs\[2\]: keys do not match the schema"):
        decode([frames[0], msgpack.packb(head)])

def test_size_limits():
    frames = encode(valid_windows())
    with pytest.raises(DecodeError, match="over the limit"):
        decode(frames, Limits(max_total_bytes=1000))
    with pytest.raises(DecodeError, match="header has"):
        decode(frames, Limits(max_header_bytes=10))
    with pytest.raises(DecodeError, match="at most 0 entries"):
        decode(frames, Limits(max_buffers=0))


def test_dtype_allow_list_is_explicit_little_endian():
    assert DTYPES == {"|u1", "<u2", "<i2", "<i4", "<f4", "<f8"}


@SETTINGS
@given(st.binary(max_size=64), st.lists(st.binary(max_size=32), max_size=3))
def test_random_header_bytes_only_raise_decode_error(head, buffers):
    try:
        decode([b"frames", head, *buffers])
    except DecodeError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | ints | floats | st.text(max_size=5) | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(st.sampled_from(["schema", "version", "topic", "seq", "t_source_ns", "sensor",
                        "sensor_seq", "stamps", "fields", "buffers"]), msgpack_values)
def test_any_header_value_only_raises_decode_error(key, value):
    frames = with_header([bytes(f) for f in encode(valid_windows())], **{key: value})
    try:
        decode(frames)
    except DecodeError:
        pass


# ---------------------------------------------------------------------------------------------
# The on-disk form: one msgpack blob per message.


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
def test_record_round_trip(cls):
    @SETTINGS
    @given(MESSAGES[cls], st.text(min_size=1, max_size=20))
    def check(msg, topic):
        got_topic, got = decode_record(encode_record(msg, topic))
        assert got_topic == topic
        assert_same(got, msg)

    check()


def test_record_is_the_wire_header_plus_bin_buffers():
    msg = valid_windows()
    record = msgpack.unpackb(encode_record(msg, "windows"), raw=False)
    header = msgpack.unpackb(encode(msg)[1], raw=False)
    assert {k: v for k, v in record.items() if k != "data"} == header
    assert record["data"] == [np.ascontiguousarray(msg.patches).tobytes()]


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.pop("data"), "missing \\['data'\\]"),
    (lambda r: r.update(data="x"), "data must be a list of bin values"),
    (lambda r: r.update(data=[]), "expected 1 buffer"),
    (lambda r: r.update(topic=7), "topic must be a str"),
    (lambda r: r.update(schema="csist.Nope"), "unknown schema"),
    (lambda r: r["data"].__setitem__(0, b"xx"), "has 2 bytes"),
])
def test_malformed_records_raise_decode_error(mutate, match):
    record = msgpack.unpackb(encode_record(valid_windows(), "windows"), raw=False)
    mutate(record)
    with pytest.raises(DecodeError, match=match):
        decode_record(msgpack.packb(record, use_bin_type=True))


def test_record_garbage_and_size_limit():
    with pytest.raises(DecodeError, match="not valid msgpack"):
        decode_record(b"\xc1\xc1")
    with pytest.raises(DecodeError, match="expected a map"):
        decode_record(msgpack.packb([1, 2]))
    with pytest.raises(DecodeError, match="over the limit"):
        decode_record(encode_record(valid_windows()), Limits(max_total_bytes=100))


def test_a_previous_wire_version_is_rejected_with_what_changed():
    msg = Points(seq=0, t_source_ns=0, points=[Point(1.0, 2.0, 3.0, 0)])
    topic, head, *rest = encode(msg)
    old = msgpack.packb({**msgpack.unpackb(head), "version": 1})
    with pytest.raises(DecodeError, match=r"version 1 but this receiver speaks version 3; "
                                          r"version 2: WindowInfo.track_id was renamed blob_id"
                                          r".*; version 3: new header keys sensor"):
        decode([topic, old, *rest])


def test_a_version_2_message_without_the_sensor_keys_is_rejected_naming_them():
    """What a version-2 peer sends: its own version and no sensor keys. The version is
    checked first, so the error says what changed rather than which keys are missing."""
    topic, head, *rest = encode(Points(seq=4, t_source_ns=0))
    header = msgpack.unpackb(head)
    del header["sensor"], header["sensor_seq"]
    old = msgpack.packb({**header, "version": 2})
    with pytest.raises(DecodeError, match=r"version 2 but this receiver speaks version 3; "
                                          r"version 3: new header keys sensor .* and "
                                          r"sensor_seq"):
        decode([topic, old, *rest])


def test_sensor_fields_round_trip_and_default_to_one_sensor():
    msg = Points(seq=9, t_source_ns=5, sensor=2, sensor_seq=4, points=[Point(1.0, 2.0, 3.0)])
    got = decode(encode(msg))
    assert (got.seq, got.t_source_ns, got.sensor, got.sensor_seq) == (9, 5, 2, 4)
    assert decode_record(encode_record(msg))[1].sensor == 2
    single = Points(seq=9, t_source_ns=5)
    assert (single.sensor, single.sensor_seq) == (0, 9)
    assert frame_header(got) == {"seq": 9, "t_source_ns": 5, "sensor": 2, "sensor_seq": 4}
