"""Socket links: lossless and drop_oldest policies, readiness, seq-gap counting, bad input
counted and dropped. Every receive has a timeout and every socket closes with linger 0."""

from __future__ import annotations

import logging
import time

import msgpack
import numpy as np
import pytest
import zmq

from pipeline.wire.bus import Inlet, Link, Outlet
from pipeline.wire.codec import Limits, encode
from stages.messages import Frame, Points

TIMEOUT_MS = 2000


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def endpoint(tmp_path_factory):
    """A fresh short ipc endpoint (socket paths are limited to ~100 bytes)."""
    folder = tmp_path_factory.mktemp("bus")
    counter = iter(range(100))
    return lambda: f"ipc://{folder}/{next(counter)}"


@pytest.fixture
def pair(ctx, endpoint):
    """Build a connected Outlet/Inlet over one link; both are closed at teardown."""
    made = []

    def make(policy="block", **kw):
        link = Link("points", endpoint(), policy, **kw)
        outlet, inlet = Outlet(ctx, [link]), Inlet(ctx, [link])
        made.append((outlet, inlet))
        assert outlet.wait_ready(2.0)
        return outlet, inlet

    yield make
    for outlet, inlet in made:
        outlet.close(linger_ms=0)
        inlet.close()


def points(seq):
    return Points(seq=seq, t_source_ns=seq * 40)


def recv_all(inlet, n):
    """Receive n messages, failing (not hanging) if they do not come."""
    got = []
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(got) < n and time.monotonic() < deadline:
        item = inlet.recv(100)
        if item is not None:
            got.append(item[1])
    assert len(got) == n, f"received {len(got)} of {n} messages"
    return got


def fill_until(inlet, received, index=0):
    """Poll until the link has received (and decoded or rejected) ``received`` messages."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    c = inlet.counters[index]
    while c.received + c.decode_errors < received and time.monotonic() < deadline:
        inlet.poll(50)
    assert c.received + c.decode_errors == received


def test_block_link_is_lossless_and_ordered(pair):
    outlet, inlet = pair("block", hwm=2)
    sent = 0
    got = []
    while len(got) < 50:  # hwm 2: the sender must wait for the receiver, nothing is lost
        if sent < 50 and outlet.send(points(sent), should_stop=lambda: True):
            sent += 1
        item = inlet.recv(50)
        if item is not None:
            got.append(item[1].seq)
    assert got == list(range(50))
    c = inlet.counters[0]
    assert (c.received, c.dropped, c.seq_gaps, c.decode_errors) == (50, 0, 0, 0)


def test_frame_arrays_survive_the_link(pair):
    outlet, inlet = pair("block")
    image = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    assert outlet.send(Frame(seq=3, t_source_ns=1, image=image))
    (msg,) = recv_all(inlet, 1)
    assert msg.image.dtype == np.uint16 and np.array_equal(msg.image, image)


def test_blocked_send_returns_false_on_stop(ctx, endpoint):
    outlet = Outlet(ctx, [Link("points", endpoint(), "block")])  # no consumer at all
    try:
        t0 = time.monotonic()
        assert outlet.send(points(0), should_stop=lambda: time.monotonic() - t0 > 0.2) is False
        assert time.monotonic() - t0 < 1.5
    finally:
        outlet.close(linger_ms=0)


@pytest.mark.parametrize("policy", ["block", "drop_oldest"])
def test_wait_ready_needs_the_consumer(ctx, endpoint, policy):
    link = Link("points", endpoint(), policy)
    outlet = Outlet(ctx, [link])
    inlet = None
    try:
        assert outlet.wait_ready(0.3) is False
        inlet = Inlet(ctx, [link])
        assert outlet.wait_ready(2.0) is True
        assert outlet.send(points(0))  # the first message after the handshake is not lost
        assert recv_all(inlet, 1)[0].seq == 0
    finally:
        outlet.close(linger_ms=0)
        if inlet is not None:
            inlet.close()


def test_seq_gaps_and_out_of_order_are_counted(pair):
    outlet, inlet = pair("block", hwm=20)
    for seq in (0, 1, 5, 6, 3, 9):
        assert outlet.send(points(seq))
    assert [m.seq for m in recv_all(inlet, 6)] == [0, 1, 5, 6, 3, 9]
    c = inlet.counters[0]
    assert c.seq_gaps == 3 + 2  # 2..4 missing, then 7..8
    assert c.out_of_order == 1  # 3 after 6


def test_drop_oldest_keeps_the_newest_and_counts(pair):
    outlet, inlet = pair("drop_oldest", hwm=100, depth=3)
    for seq in range(10):
        assert outlet.send(points(seq))
    fill_until(inlet, 10)
    assert inlet.pending() == 3
    assert [m.seq for m in recv_all(inlet, 3)] == [7, 8, 9]
    c = inlet.counters[0]
    assert (c.received, c.dropped, c.seq_gaps) == (10, 7, 0)
    assert inlet.recv(50) is None


def test_drop_oldest_sender_never_blocks(pair):
    outlet, inlet = pair("drop_oldest", hwm=1, depth=1)
    t0 = time.monotonic()
    for seq in range(200):
        assert outlet.send(points(seq))  # nobody reads: ZeroMQ queues fill, sends still return
    assert time.monotonic() - t0 < 1.0
    assert sum(outlet.send_dropped) > 0


def test_end_of_stream_ends_the_link(pair):
    outlet, inlet = pair("block")
    for seq in range(3):
        assert outlet.send(points(seq))
    assert outlet.send_end()
    assert not inlet.ended
    assert [m.seq for m in recv_all(inlet, 3)] == [0, 1, 2]
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not inlet.ended and time.monotonic() < deadline:
        assert inlet.recv(50) is None
    assert inlet.ended and inlet.counters[0].received == 3


def test_two_links_arrive_in_arrival_order(ctx, endpoint):
    links = [Link("points", endpoint()), Link("frames", endpoint())]
    outlets = [Outlet(ctx, [lk]) for lk in links]
    inlet = Inlet(ctx, links)
    try:
        assert all(o.wait_ready(2.0) for o in outlets)
        outlets[0].send(points(0))
        fill_until(inlet, 1, index=0)
        outlets[1].send(Frame(seq=0, t_source_ns=0, image=np.zeros((2, 2), np.uint8)))
        fill_until(inlet, 1, index=1)
        first, second = inlet.recv(100), inlet.recv(100)
        assert (first[0], type(first[1])) == (0, Points)
        assert (second[0], type(second[1])) == (1, Frame)
    finally:
        for o in outlets:
            o.close(linger_ms=0)
        inlet.close()


def test_malformed_messages_are_counted_and_dropped(ctx, endpoint, caplog):
    link = Link("points", endpoint(), "block", hwm=20)
    raw = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(link.endpoint)
    inlet = Inlet(ctx, [link])
    try:
        good = encode(points(5))
        head = msgpack.unpackb(bytes(good[1]))
        garbage = [
            [b"points"],  # one frame
            [b"points", b"\xc1"],  # not msgpack
            [b"points", msgpack.packb({**head, "schema": "csist.Unknown"})],
            [b"points", msgpack.packb({**head, "buffers": [
                {"name": "x", "dtype": "|O", "shape": [1]}]}), b"\0"],
            [b"frames", bytes(good[1])],  # topic mismatch
        ]
        for frames in [*garbage, good]:
            raw.send_multipart(frames)
        (msg,) = recv_all(inlet, 1)  # only the good one comes out, nothing raised
        assert msg.seq == 5
        c = inlet.counters[0]
        assert (c.decode_errors, c.received) == (len(garbage), 1)
    finally:
        raw.close()
        with caplog.at_level(logging.WARNING, logger="pipeline.wire.bus"):
            inlet.close()  # the 2 errors past the first 3 are told when the link closes
    assert f"... and {len(garbage) - 3} more since" in caplog.text


def test_oversize_message_is_refused_without_crashing(ctx, endpoint):
    link = Link("frames", endpoint(), "block")
    outlet = Outlet(ctx, [link])
    inlet = Inlet(ctx, [link], Limits(max_total_bytes=10_000))
    try:
        assert outlet.wait_ready(2.0)
        big = Frame(seq=0, t_source_ns=0, image=np.zeros((100, 100), np.float32))  # 40 kB
        outlet.send(big)
        # ZeroMQ (MAXMSGSIZE) disconnects the peer; nothing arrives, nothing is raised.
        assert inlet.recv(300) is None
        assert inlet.counters[0].received == 0
    finally:
        outlet.close(linger_ms=0)
        inlet.close()
