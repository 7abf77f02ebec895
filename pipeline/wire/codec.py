"""Wire codec: a message <-> a list of ZeroMQ frames. Two pure functions, no sockets, no pickle.

Frame layout of one multipart message (see ``docs/wire-format.md``)::

    frame 0        topic, UTF-8 (e.g. b"frames"); also usable as a SUB prefix filter
    frame 1        header, a msgpack map with string keys:
                     schema       str   message type, e.g. "csist.Frame"
                     version      int   schema version (must equal the receiver's)
                     topic        str   same as frame 0
                     seq          int   frame seq the content describes (>= 0)
                     t_source_ns  int   source timestamp of that frame (ns)
                     sensor       int   sensor that took the frame (>= 0)
                     sensor_seq   int   the frame's number within that sensor's stream (>= 0)
                     stamps       map   str -> int, per-stage times (Unix ns) set by the runner
                     fields       map   every other field; lists of records are lists of maps
                     buffers      list  one {name, dtype, shape} map per array field, in order
    frame 2 ...    one raw C-contiguous little-endian buffer per entry of ``buffers``

``dtype`` is a numpy type string from the allow-list :data:`DTYPES` (``|u1``, ``<u2``,
``<i2``, ``<i4``, ``<f4``, ``<f8``) and ``shape`` a list of ints; a buffer must hold exactly
``prod(shape) * itemsize`` bytes. Decoding checks every rule and the size limits in
:class:`Limits`; any violation raises :class:`DecodeError` (one class, a message naming the
problem), never anything else.

On disk (MCAP recordings) a message is one msgpack blob instead of several frames: the header
map above with one more key, ``data``, a list holding each buffer as a msgpack ``bin`` value
in the order of ``buffers`` (:func:`encode_record`, :func:`decode_record`). Both forms share
every rule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import reprlib
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from stages.messages import (
    FRAME_FIELDS,
    MESSAGE_TYPES,
    VERSION_CHANGES,
    EndOfStream,
    Message,
    PipelineError,
    frame_header,
)

#: numpy type strings allowed in a buffer descriptor (explicit little-endian).
DTYPES = frozenset({"|u1", "<u2", "<i2", "<i4", "<f4", "<f8"})
HEADER_KEYS = ("schema", "version", "topic", "seq", "t_source_ns", "sensor", "sensor_seq",
               "stamps", "fields", "buffers")
MAX_NDIM = 8
#: Largest length of one array axis (numpy's own limit is 2**63 - 1).
MAX_DIM = 2**31 - 1
MAX_TOPIC_BYTES = 256


class DecodeError(PipelineError, ValueError):
    """A received message breaks the wire format; the message says which rule."""


class EncodeError(PipelineError, ValueError):
    """A message cannot be encoded (a field of a type the wire format does not carry)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Size limits applied when decoding untrusted frames.

    Attributes
    ----------
    max_header_bytes : int
        Largest msgpack header (frame 1).
    max_buffers : int
        Most array buffers in one message.
    max_total_bytes : int
        Largest sum of all frame sizes; also a sensible ZMQ_MAXMSGSIZE for a receiving socket.
    """

    max_header_bytes: int = 1 << 20
    max_buffers: int = 8
    max_total_bytes: int = 64 << 20


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------------------------
# Field specs: how each field of each message/record type travels.

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SCALARS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool]]] = {
    # annotation -> (encode conversion, decode type test)
    "int": (operator.index, _is_int),
    "float": (float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": (str, lambda v: isinstance(v, str)),
}


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # "int" | "float" | "str" | "records" | "array"
    record: type | None = None
    optional: bool = False


_SPECS: dict[type, tuple[_Field, ...]] = {}
_KEYS: dict[type, frozenset[str]] = {}  # the field names of each spec, as a set


def _spec(cls: type) -> tuple[_Field, ...]:
    """Field specs of a message or record class (header fields excluded), cached."""
    if cls in _SPECS:
        return _SPECS[cls]
    arrays = getattr(cls, "ARRAYS", ())
    records = cls.RECORDS
    header = {*FRAME_FIELDS, "stamps"} if issubclass(cls, Message) else set()
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in header:
            continue
        annotation = str(f.type)
        if f.name in arrays:
            specs.append(_Field(f.name, "array"))
        elif f.name in records:
            _spec(records[f.name])
            specs.append(_Field(f.name, "records", records[f.name], "None" in annotation))
        elif annotation in _SCALARS:
            specs.append(_Field(f.name, annotation))
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: the codec cannot carry {annotation!r}")
    _SPECS[cls] = tuple(specs)
    _KEYS[cls] = frozenset(f.name for f in specs)
    return _SPECS[cls]


# ---------------------------------------------------------------------------------------------
# Encoding.


def _encode_value(owner: str, spec: _Field, value: Any) -> Any:
    if spec.kind == "records":
        if value is None and spec.optional:
            return None
        return [_encode_record(spec.record, item) for item in value]
    try:
        return _SCALARS[spec.kind][0](value)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"{owner}.{spec.name} must be {spec.kind}, got {value!r}") from exc


def _encode_record(cls: type, record: Any) -> dict[str, Any]:
    return {s.name: _encode_value(cls.__name__, s, getattr(record, s.name)) for s in _spec(cls)}


def _encode_array(owner: str, name: str, value: Any) -> tuple[dict[str, Any], memoryview]:
    arr = np.ascontiguousarray(value)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.str not in DTYPES:
        raise EncodeError(
            f"{owner}.{name} has dtype {arr.dtype} ({arr.dtype.str}); the wire carries only "
            f"{sorted(DTYPES)}"
        )
    desc = {"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)}
    return desc, memoryview(arr.reshape(-1).view(np.uint8))


def _encode_header(msg: Message, topic: str | None) -> tuple[dict[str, Any], list[memoryview]]:
    """The header map of ``msg`` and its buffers (zero-copy views when possible)."""
    cls = type(msg)
    owner = cls.__name__
    topic = cls.TOPIC if topic is None else topic
    fields: dict[str, Any] = {}
    descs: list[dict[str, Any]] = []
    buffers: list[memoryview] = []
    for spec in _spec(cls):
        value = getattr(msg, spec.name)
        if spec.kind == "array":
            desc, buf = _encode_array(owner, spec.name, value)
            descs.append(desc)
            buffers.append(buf)
        else:
            fields[spec.name] = _encode_value(owner, spec, value)
    header = {
        "schema": cls.SCHEMA,
        "version": cls.VERSION,
        "topic": topic,
        **{key: operator.index(value) for key, value in frame_header(msg).items()},
        "stamps": {str(k): operator.index(v) for k, v in msg.stamps.items()},
        "fields": fields,
        "buffers": descs,
    }
    return header, buffers


def encode(msg: Message, topic: str | None = None) -> list[bytes | memoryview]:
    """Encode a message as multipart frames ``[topic, header, buffer...]``.

    Parameters
    ----------
    msg : Message
    topic : str, optional
        Topic to send on; defaults to ``msg.TOPIC``.

    Returns
    -------
    list of bytes or memoryview
        The frames, ready for ``socket.send_multipart(frames, copy=False)``. Buffers are
        zero-copy views of the message's arrays (when they are already C-contiguous
        little-endian), so the arrays must not be modified afterwards.

    Raises
    ------
    EncodeError
        A field cannot be carried (e.g. an array of a dtype outside :data:`DTYPES`).
    """
    header, buffers = _encode_header(msg, topic)
    return [header["topic"].encode(), msgpack.packb(header, use_bin_type=True), *buffers]


def encode_record(msg: Message, topic: str | None = None) -> bytes:
    """Encode a message as one msgpack blob (the on-disk form, e.g. one MCAP message).

    The blob is the header map of :func:`encode` plus the key ``data``: the buffers as a list
    of msgpack ``bin`` values, in the order of ``buffers``.

    Raises
    ------
    EncodeError
        As :func:`encode`.
    """
    header, buffers = _encode_header(msg, topic)
    header["data"] = buffers
    return msgpack.packb(header, use_bin_type=True)


# ---------------------------------------------------------------------------------------------
# Decoding.


def _fail(where: str, problem: str) -> DecodeError:
    return DecodeError(f"{where}: {problem}" if where else problem)


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 2, 40, 40
    short.maxlist = short.maxdict = short.maxtuple = 4
    return short


_SHORT = _short_repr()


def _show(value: Any) -> str:
    """A short, bounded repr of an untrusted value (for error messages): long strings and
    deep or wide containers are abbreviated, so no input can make the message huge or
    recurse."""
    return _SHORT.repr(value)


def _only_decode_errors(fn):
    """Whatever the bytes, ``fn`` raises only :class:`DecodeError`: an escape of any other
    error (a rule this module forgot) is turned into one, naming its type."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DecodeError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                RecursionError, MemoryError) as exc:
            raise DecodeError(f"malformed message ({type(exc).__name__})") from exc

    return wrapper


def _check_keys(where: str, got: Any, expected: Sequence[str]) -> None:
    if not isinstance(got, dict):
        raise _fail(where, f"expected a map, got {type(got).__name__}")
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if missing or extra:
        raise _fail(where, f"keys do not match the schema (missing {missing}, unexpected "
                           f"{_show(extra)})")


#: Exact wire types that pass each scalar kind as they are (the fast path of _decode_value).
_EXACT = {"int": int, "float": float, "str": str}


def _decode_value(where: str, spec: _Field, value: Any) -> Any:
    kind = spec.kind
    if type(value) is _EXACT.get(kind):  # the common case, checked first (bool is not int)
        return value
    if kind == "records":
        if value is None and spec.optional:
            return None
        if not isinstance(value, list):
            raise _fail(where, f"{spec.name} must be a list of maps, got {type(value).__name__}")
        try:
            return tuple(_decode_record(where, spec.record, item) for item in value)
        except DecodeError:  # again, naming the item (only failures pay for the names)
            for i, item in enumerate(value):
                _decode_record(f"{where}.{spec.name}[{i}]", spec.record, item)
            raise
    if not _SCALARS[kind][1](value):
        raise _fail(where, f"{spec.name} must be {kind}, got {type(value).__name__}")
    return float(value) if kind == "float" else value


def _decode_record(where: str, cls: type, value: Any) -> Any:
    specs = _spec(cls)
    if not (type(value) is dict and value.keys() == _KEYS[cls]):
        _check_keys(where, value, [s.name for s in specs])
    return cls(**{s.name: _decode_value(where, s, value[s.name]) for s in specs})


def _decode_array(where: str, desc: Any, buf: Any, name: str) -> np.ndarray:
    _check_keys(where, desc, ("name", "dtype", "shape"))
    if desc["name"] != name:
        raise _fail(where, f"buffer named {_show(desc['name'])} where {name!r} was expected")
    dtype = desc["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _fail(where, f"dtype {_show(dtype)} is not allowed; allowed: {sorted(DTYPES)}")
    shape = desc["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_DIM
                   for n in shape)
    ):
        raise _fail(where, f"shape must be a list of at most {MAX_NDIM} ints in 0..{MAX_DIM}, "
                           f"got {_show(shape)}")
    dt = np.dtype(dtype)
    view = memoryview(buf)
    need = math.prod(shape) * dt.itemsize
    if view.nbytes != need:
        raise _fail(
            where, f"buffer {name!r} has {view.nbytes} bytes but {dtype} {shape} needs {need}"
        )
    return np.frombuffer(view, dtype=dt).reshape(shape)


def _unpack(where: str, data: Any) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
    except Exception as exc:  # msgpack raises many types on garbage; all mean the same here
        raise _fail(where, f"not valid msgpack ({type(exc).__name__}: {exc})") from exc


def _record_header_bytes(view: memoryview) -> int:
    """Bytes of a record's entries other than ``data``, measured without building any object
    (msgpack's ``skip``), so a record whose header would unpack into millions of objects is
    refused before it costs memory. 0 when the top level is not a map (the full unpack then
    names the problem)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=view.nbytes)
    try:
        unpacker.feed(view)
        entries = unpacker.read_map_header()
        total = 0
        for _ in range(entries):
            key = unpacker.unpack()
            start = unpacker.tell()
            unpacker.skip()
            if key != "data":
                total += unpacker.tell() - start
        return total
    except Exception:  # not a map, truncated, garbage: left to the full unpack to name
        return 0


def _checked_header(frames: Sequence[Any], limits: Limits) -> tuple[str, dict, list]:
    """The frame count, sizes and topic of a multipart message checked, its header unpacked
    with the right keys: (where, header, the buffer views)."""
    if not isinstance(frames, Sequence) or len(frames) < 2:
        raise DecodeError("a message needs at least 2 frames [topic, header]")
    views = [memoryview(f) for f in frames]
    total = sum(v.nbytes for v in views)
    if total > limits.max_total_bytes:
        raise DecodeError(f"message has {total} bytes, over the limit of {limits.max_total_bytes}")
    if views[0].nbytes > MAX_TOPIC_BYTES:
        raise DecodeError(f"topic frame longer than {MAX_TOPIC_BYTES} bytes")
    try:
        topic = bytes(views[0]).decode()
    except UnicodeDecodeError as exc:
        raise DecodeError("topic frame is not UTF-8") from exc
    where = f"topic {topic!r}"
    if views[1].nbytes > limits.max_header_bytes:
        raise _fail(where, f"header has {views[1].nbytes} bytes, over the limit of "
                           f"{limits.max_header_bytes}")
    header = _unpack(f"{where} header", views[1])
    _check_header_keys(f"{where} header", header, HEADER_KEYS)
    if header["topic"] != topic:
        raise _fail(where, f"header topic {_show(header['topic'])} differs from frame 0")
    return where, header, views[2:]


@_only_decode_errors
def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode multipart frames ``[topic, header, buffer...]`` into a message.

    Parameters
    ----------
    frames : sequence of bytes-like
        As received with ``recv_multipart``.
    limits : Limits
        Size limits for untrusted input.

    Returns
    -------
    Message
        Arrays are read-only views of the received buffers.

    Raises
    ------
    DecodeError
        On any violation of the wire format, with a message naming the rule.
    """
    where, header, buffers = _checked_header(frames, limits)
    return _decode_message(where, header, buffers, limits)


@dataclasses.dataclass(frozen=True)
class WireMessage:
    """A message kept as the frames it arrived in, for a stage that only forwards it (the
    tap): its header checked and its ``seq``, ``t_source_ns`` and ``stamps`` read, its fields
    and buffers left as they are (:func:`peek`)."""

    frames: tuple
    schema: str
    seq: int
    t_source_ns: int
    stamps: dict
    limits: Limits = DEFAULT_LIMITS

    @property
    def message_type(self) -> type[Message]:
        """The class of the message it encodes (what :class:`stages.base.SeqJoin` keys on)."""
        return MESSAGE_TYPES[self.schema]

    def decode(self) -> Message:
        """The message itself (:func:`decode` of the frames, under the same limits)."""
        return decode(self.frames, self.limits)


@_only_decode_errors
def peek(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message | WireMessage:
    """:func:`decode`'s checks of the frames and the header, without decoding the fields and
    buffers: a :class:`WireMessage` (an EndOfStream marker is decoded, the receiver acts on
    it). Re-sending its ``frames`` sends exactly what arrived.

    Raises
    ------
    DecodeError
        As :func:`decode`, for the rules of the frames and the header.
    """
    where, header, buffers = _checked_header(frames, limits)
    cls, where, frame, stamps = _checked_header_fields(where, header)
    if cls is EndOfStream:
        return _decode_message(where, header, buffers, limits)
    return WireMessage(tuple(frames), header["schema"], frame["seq"], frame["t_source_ns"],
                       stamps, limits)


@_only_decode_errors
def decode_record(data: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[str, Message]:
    """Decode one on-disk blob written by :func:`encode_record`.

    Parameters
    ----------
    data : bytes-like
        The blob (e.g. the ``data`` of one MCAP message).
    limits : Limits
        Size limits; ``max_total_bytes`` bounds the blob.

    Returns
    -------
    (topic, Message)
        The topic named in the header, and the message.

    Raises
    ------
    DecodeError
        On any violation of the format, with a message naming the rule.
    """
    view = memoryview(data)
    if view.nbytes > limits.max_total_bytes:
        raise DecodeError(f"record has {view.nbytes} bytes, over the limit of "
                          f"{limits.max_total_bytes}")
    header_bytes = _record_header_bytes(view)
    if header_bytes > limits.max_header_bytes:
        raise DecodeError(f"record has {header_bytes} header bytes besides its data buffers, "
                          f"over the limit of {limits.max_header_bytes}")
    record = _unpack("record", view)
    _check_header_keys("record", record, (*HEADER_KEYS, "data"))
    topic = record.pop("topic")
    if not isinstance(topic, str) or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise DecodeError(f"record topic must be a str of at most {MAX_TOPIC_BYTES} bytes")
    buffers = record.pop("data")
    if not isinstance(buffers, list) or not all(isinstance(b, bytes) for b in buffers):
        raise DecodeError(f"topic {_show(topic)}: record data must be a list of bin values")
    return topic, _decode_message(f"topic {_show(topic)}", record, buffers, limits)


def _checked_version(where: str, header: dict) -> tuple[type, str]:
    """Check a header's schema and version: (message class, where)."""
    schema = header["schema"]
    cls = MESSAGE_TYPES.get(schema) if isinstance(schema, str) else None
    if cls is None:
        raise _fail(where, f"unknown schema {_show(schema)}; known: {sorted(MESSAGE_TYPES)}")
    where = f"{where} {schema}"
    version = header["version"]
    if not _is_int(version) or version != cls.VERSION:
        changes = "".join(f"; version {v}: {VERSION_CHANGES[v]}" for v in sorted(VERSION_CHANGES)
                          if _is_int(version) and version < v <= cls.VERSION)
        raise _fail(where, f"version {_show(version)} but this receiver speaks version "
                           f"{cls.VERSION}{changes} (docs/wire-format.md, 'Versions')")
    return cls, where


def _check_header_keys(where: str, header: Any, expected: Sequence[str]) -> None:
    """:func:`_check_keys` for a header; a header of another version (whose keys differ when
    a version added or removed one) fails naming the versions and what changed instead."""
    if isinstance(header, dict) and {"schema", "version"} <= header.keys():
        if header.keys() != set(expected):
            _checked_version(where, header)
    _check_keys(where, header, expected)


def _checked_header_fields(where: str, header: dict) -> tuple[type, str, dict[str, int], dict]:
    """Check a header's schema, version, frame fields (seq, t_source_ns, sensor, sensor_seq)
    and stamps: (message class, where, the frame fields, stamps)."""
    cls, where = _checked_version(where, header)
    frame = {key: header[key] for key in FRAME_FIELDS}
    if not (all(_is_int(v) for v in frame.values())
            and min(frame["seq"], frame["sensor"], frame["sensor_seq"]) >= 0):
        raise _fail(where, f"seq, t_source_ns, sensor and sensor_seq must be ints, seq, sensor "
                           f"and sensor_seq >= 0 (got {_show(frame)})")
    stamps = header["stamps"]
    if not isinstance(stamps, dict) or not all(
        isinstance(k, str) and _is_int(v) for k, v in stamps.items()
    ):
        raise _fail(where, "stamps must be a map of str -> int")
    return cls, where, frame, stamps


def _decode_message(where: str, header: dict, buffers: Sequence[Any], limits: Limits) -> Message:
    """Check a parsed header (the topic already checked) and its buffers; build the message."""
    cls, where, frame, stamps = _checked_header_fields(where, header)
    specs = _spec(cls)
    arrays = [s.name for s in specs if s.kind == "array"]
    descs = header["buffers"]
    if not isinstance(descs, list) or len(descs) > limits.max_buffers:
        raise _fail(where, f"buffers must be a list of at most {limits.max_buffers} entries")
    if len(descs) != len(arrays) or len(buffers) != len(arrays):
        raise _fail(where, f"expected {len(arrays)} buffer(s) {arrays}, got {len(descs)} "
                           f"descriptor(s) and {len(buffers)} buffer(s)")
    values: dict[str, Any] = {
        name: _decode_array(f"{where} buffer {i}", desc, buffers[i], name)
        for i, (name, desc) in enumerate(zip(arrays, descs, strict=True))
    }
    fields = header["fields"]
    scalar_specs = [s for s in specs if s.kind != "array"]
    _check_keys(f"{where} fields", fields, [s.name for s in scalar_specs])
    for s in scalar_specs:
        values[s.name] = _decode_value(where, s, fields[s.name])
    try:
        return cls(**frame, stamps=stamps, **values)
    except (TypeError, ValueError) as exc:
        raise _fail(where, str(exc)) from exc


# Build every spec now, so a message field the wire cannot carry fails at import time.
for _cls in MESSAGE_TYPES.values():
    _spec(_cls)
