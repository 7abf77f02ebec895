"""The control plane on its own: reports, set-once flags both ways, bad messages counted and
dropped, and silence taken as loss."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import zmq

from pipeline.run.control import Conductor, ControlClient, pack


def _poll_until(conductor: Conductor, want, timeout_s: float = 5.0) -> list:
    """Poll the conductor until ``want(reports so far)`` holds; returns the reports."""
    seen: list = []
    deadline = time.monotonic() + timeout_s
    while not want(seen) and time.monotonic() < deadline:
        seen.extend(conductor.poll(0.05))
    return seen


@contextlib.contextmanager
def conducting(tmp_path, names: list[str], peers) -> Iterator[tuple[Conductor, list]]:
    """A conductor for ``names`` and ``peers(ctx, endpoint)`` (its stage-side sockets), all
    closed at the end."""
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/control"
    conductor = Conductor(ctx, endpoint, names)
    sockets = []
    try:
        sockets = peers(ctx, endpoint)
        yield conductor, sockets
    finally:
        for sock in sockets:
            sock.close()
        conductor.close()
        ctx.destroy(linger=0)


def _clients(ctx, endpoint):
    return [ControlClient(ctx, endpoint, n, peer_timeout_s=10, first_contact_s=10)
            for n in ("a", "b")]


def _bad_peers(ctx, endpoint):
    """One DEALER per bad report, each sent at once (the names differ: a routing id taken
    again replaces its predecessor's connection)."""
    socks = []
    for name, frames in [(b"a", [b"\xc1not msgpack"]), (b"b", [pack("x", 1), b"extra"]),
                         (b"c", [b"\x92\x01\x02"]), (b"zed", [pack("ready", None)]),
                         (b"d", [pack("set", "go")])]:  # only the conductor sets go
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, name)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        socks.append(sock)
        sock.send_multipart(frames)
    return socks


def test_reports_arrive_and_flags_travel_both_ways(tmp_path):
    with conducting(tmp_path, ["a", "b"], _clients) as (conductor, clients):
        clients[0].report("hello", {"plan": "x", "pid": 1, "host": "h"})
        clients[1].report("ready")
        seen = _poll_until(conductor, lambda s: len(s) >= 2)
        assert ("a", "hello", {"plan": "x", "pid": 1, "host": "h"}) in seen
        assert ("b", "ready", None) in seen
        conductor.set("go")
        assert clients[1].go.wait(5.0) and clients[0].go.wait(5.0)
        clients[0].ended["a"].set()  # a stage raises its own flag: every peer sees it
        _poll_until(conductor, lambda s: conductor.state.is_set("ended", "a"))
        assert clients[1].ended["a"].wait(5.0)
        assert not clients[1].ended["b"].is_set() and not clients[1].aborted()
        clients[1].abort.set()
        _poll_until(conductor, lambda s: conductor.state.is_set("abort"))
        assert clients[0].abort.wait(5.0) and clients[0].aborted()


def test_malformed_and_unknown_reports_are_counted_and_dropped(tmp_path):
    with conducting(tmp_path, ["a", "b", "c", "d"], _bad_peers) as (conductor, _):
        seen = _poll_until(conductor, lambda s: conductor.rejected >= 5)
        assert conductor.rejected == 5
        assert seen == [("d", "set", "go")]  # yielded, but it set nothing
        assert not conductor.state.is_set("go")


def test_a_stage_whose_conductor_falls_silent_aborts(tmp_path):
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/control"
    conductor = Conductor(ctx, endpoint, ["a"])
    client = ControlClient(ctx, endpoint, "a", peer_timeout_s=1.5, first_contact_s=10)
    try:
        client.report("hello", {})
        _poll_until(conductor, lambda s: bool(s))
        assert client.go.wait(0.1) is False and not client.aborted()  # it heard the state
        conductor.close()  # the conductor is gone
        deadline = time.monotonic() + 5
        while not client.aborted() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.aborted() and "silent" in client.lost
        lonely = ControlClient(ctx, f"ipc://{tmp_path}/nobody", "b", peer_timeout_s=10,
                               first_contact_s=0.3)
        time.sleep(0.4)
        assert lonely.aborted() and "no conductor answered" in lonely.lost
        lonely.close()
    finally:
        conductor.close()
        client.close()
        ctx.destroy(linger=0)
