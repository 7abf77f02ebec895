"""The fuzz campaign against both decoders in CI: whatever the bytes, only DecodeError.

12,000 rounds of :func:`pipeline.wire.fuzz.campaign` (each a hostile multipart message and a
hostile record made from a valid encoding of one message type), plus two targeted cases.
"""

from __future__ import annotations

import json

import msgpack

from pipeline.wire.codec import DecodeError, decode, decode_record, encode, encode_record
from pipeline.wire.fuzz import SAMPLES, campaign, nested
from stages.messages import MESSAGE_TYPES


def test_every_decoder_raises_only_decode_error_whatever_the_bytes():
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    result = campaign(12_000, seed=2026)
    assert result["escapes"] == []
    assert result["outcomes"]["DecodeError"] > 15_000 and result["outcomes"]["decoded"] > 500
    assert result["slowest_ms"] < 1_000


def test_the_fuzz_command_reports_and_fails_only_on_escapes(tmp_path, capsys):
    from pipeline.__main__ import main

    out = tmp_path / "fuzz.json"
    assert main(["fuzz", "--messages", "200", "--out", str(out)]) == 0
    assert "400 hostile inputs" in capsys.readouterr().out
    assert json.loads(out.read_text())["escapes"] == []


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
