"""Thin socket layer: links between stages, with an explicit queue policy per link.

A *link* carries one topic from its producer to one consumer over its own endpoint. The
producer binds (it is started before anything is sent and is the stable side), the consumer
connects. Two queue policies:

``block`` (lossless; replay, evaluation, tests)
    PUSH -> PULL. The sender waits (in slices of ``poll_ms``, so a stop request is noticed)
    until the link can take the message; a slow consumer slows the producer down. The receiver
    takes one message at a time from the socket, so the ZeroMQ high-water marks bound what is
    queued and back-pressure reaches the source.
``drop_oldest`` (live)
    XPUB -> SUB. The sender never waits for data: when the ZeroMQ queue is full
    (``XPUB_NODROP`` turns the silent PUB drop into EAGAIN) the new message is dropped and
    counted in ``Outlet.send_dropped``; the receiver sees it as a ``seq`` gap. The receiver
    drains its socket on every call into a bounded deque of ``depth`` messages and drops the
    oldest when it overflows, counting each drop. Only the EndOfStream marker is retried
    until it fits.

**Replicas** (:mod:`pipeline.run.replicas`). The links of one topic to the N replicas of a
stage form a *group* on the sending side: each message goes to one of them, the first
writable one in round-robin order starting after the previous pick (a replica whose queue is
full is passed over, so a slow one gets less), never to one reported dead. On the receiving
side the links from the N replicas of a stage form a group that is merged back into ``seq``
order: the smallest head is released once every live link of the group has a message
waiting (each replica's stream rises, so nothing smaller can come later).

Every receive has a timeout (a poller), every socket has an explicit linger, receiving sockets
set ``ZMQ_MAXMSGSIZE``, and decode errors are counted and dropped, never raised. ``CONFLATE``
is not used (it breaks multipart messages). An :class:`~stages.messages.EndOfStream` message
marks the end of a link's stream.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

import zmq

from pipeline.wire.codec import (
    DEFAULT_LIMITS,
    DecodeError,
    Limits,
    WireMessage,
    decode,
    encode,
    peek,
)
from pipeline.wire.curve import ChainCurve
from stages.messages import EndOfStream, Message
from stages.ratelimit import LimitedWarnings

logger = logging.getLogger(__name__)

POLICIES = ("block", "drop_oldest")
#: Largest wait of one poll; calls that wait longer loop and check ``should_stop`` in between.
POLL_MS = 100
#: Pause between tries of an EndOfStream that did not fit a full ``drop_oldest`` link (s).
RETRY_S = 0.005
#: Linger of lossless sending sockets: how long ``close`` may wait for queued messages (ms).
DRAIN_LINGER_MS = 2000
#: Most messages one ``recv`` drains from a ``drop_oldest`` socket (bounds the time spent).
MAX_DRAIN = 256


def _never() -> bool:
    """Default ``should_stop``: never stop."""
    return False


@dataclasses.dataclass(frozen=True)
class Link:
    """One producer -> consumer connection.

    Attributes
    ----------
    topic : str
        Topic carried (frame 0 of every message).
    endpoint : str
        ZeroMQ endpoint, e.g. ``ipc:///tmp/run/frames.detector`` or ``tcp://127.0.0.1:5601``.
    policy : {"block", "drop_oldest"}
        Queue policy (see the module docstring).
    hwm : int
        ZeroMQ SNDHWM/RCVHWM in messages.
    depth : int
        Receiver queue length of a ``drop_oldest`` link.
    """

    topic: str
    endpoint: str
    policy: str = "block"
    hwm: int = 4
    depth: int = 2

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"link {self.topic!r}: policy must be one of {POLICIES}, "
                             f"got {self.policy!r}")
        if self.hwm < 1 or self.depth < 1:
            raise ValueError(f"link {self.topic!r}: hwm and depth must be >= 1")


@dataclasses.dataclass
class LinkCounters:
    """What a receiver saw on one link.

    Attributes
    ----------
    received : int
        Messages decoded (EndOfStream excluded).
    dropped : int
        Messages dropped by the receiver's ``drop_oldest`` queue.
    decode_errors : int
        Malformed messages dropped.
    seq_gaps : int
        Messages missing according to forward jumps of ``seq``.
    out_of_order : int
        Messages whose ``seq`` was not above the previous one.
    """

    received: int = 0
    dropped: int = 0
    decode_errors: int = 0
    seq_gaps: int = 0
    out_of_order: int = 0
    last_seq: int | None = None

    def count_seq(self, seq: int) -> None:
        """Update the gap counters with the ``seq`` of a newly received message."""
        if self.last_seq is not None:
            if seq > self.last_seq + 1:
                self.seq_gaps += seq - self.last_seq - 1
            elif seq <= self.last_seq:
                self.out_of_order += 1
        self.last_seq = seq if self.last_seq is None else max(seq, self.last_seq)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "last_seq"}


class Outlet:
    """Sending side of all links of one topic.

    Parameters
    ----------
    ctx : zmq.Context
    links : sequence of Link
        All links of the topic (one per consumer); may be empty for a topic nobody reads.
    groups : sequence of str, optional
        The consumer stage of each link: links with the same group go to the replicas of one
        stage, and each message goes to one of them (see the module docstring). Default:
        every link its own group.
    dead : callable, optional
        ``dead(index)`` is True once link ``index``'s consumer is gone for good (a killed
        replica): nothing more is sent or waited for on that link.
    curve : ChainCurve, optional
        Encrypt and authenticate the links with the chain's key pair (``run.chain_key``).
    """

    def __init__(self, ctx: zmq.Context, links: Sequence[Link],
                 groups: Sequence[str] | None = None,
                 dead: Callable[[int], bool] | None = None,
                 curve: ChainCurve | None = None) -> None:
        self.links = tuple(links)
        self.sent = 0
        self.send_dropped = [0] * len(self.links)
        names = list(groups) if groups is not None else [str(i) for i in range(len(self.links))]
        self._groups = [[i for i, g in enumerate(names) if g == name]
                        for name in dict.fromkeys(names)]
        self._turn = [0] * len(self._groups)
        self._dead = dead or (lambda _index: False)
        self._sockets: list[zmq.Socket] = []
        try:
            for link in self.links:
                lossless = link.policy == "block"
                sock = ctx.socket(zmq.PUSH if lossless else zmq.XPUB)
                self._sockets.append(sock)
                sock.setsockopt(zmq.LINGER, DRAIN_LINGER_MS if lossless else 0)
                sock.setsockopt(zmq.SNDHWM, link.hwm)
                if not lossless:
                    sock.setsockopt(zmq.XPUB_NODROP, 1)
                if curve is not None:
                    curve.server(sock)
                sock.bind(link.endpoint)
        except zmq.ZMQError:
            self.close(linger_ms=0)
            raise

    def wait_ready(self, timeout_s: float, should_stop: Callable[[], bool] = _never) -> bool:
        """Wait until every link has its consumer (readiness handshake before the first send).

        A PUSH link is ready when a peer is connected (the socket becomes writable); an XPUB
        link when its consumer's subscription has arrived, so nothing sent afterwards is lost
        to the slow-joiner race.

        Returns
        -------
        bool
            True when all links are ready, False on timeout or stop.
        """
        waiting = {sock: link for link, sock in zip(self.links, self._sockets, strict=True)}
        deadline = time.monotonic() + timeout_s
        while waiting:
            if should_stop():
                return False
            if time.monotonic() > deadline:
                logger.warning("no consumer on %s after %.1f s",
                               [lk.endpoint for lk in waiting.values()], timeout_s)
                return False
            poller = zmq.Poller()
            for sock, link in waiting.items():
                poller.register(sock, zmq.POLLOUT if link.policy == "block" else zmq.POLLIN)
            for sock, _ in poller.poll(POLL_MS):
                # A writable PUSH has a peer; an XPUB's first read is the consumer's subscription.
                if waiting[sock].policy == "block" or sock.recv()[:1] == b"\x01":
                    del waiting[sock]
        return True

    def send(self, msg: Message, should_stop: Callable[[], bool] = _never) -> bool:
        """Encode ``msg`` once and send it on every link of the topic (on one link of each
        group of replicas).

        Returns
        -------
        bool
            False when a ``block`` link was still full when ``should_stop()`` became true.
        """
        if not self.links:
            self.sent += 1
            return True
        frames = encode(msg, self.links[0].topic)
        for g, members in enumerate(self._groups):
            if len(members) == 1:
                sent = self._send_on(members[0], frames, should_stop)
            else:
                sent = self._send_to_replica(g, members, frames, should_stop)
            if not sent:
                return False
        self.sent += 1
        return True

    def _send_on(self, index: int, frames: list, should_stop: Callable[[], bool]) -> bool:
        """One link: a ``block`` link waits for room, a full ``drop_oldest`` link drops."""
        sock = self._sockets[index]
        if self.links[index].policy == "block":
            while not sock.poll(POLL_MS, zmq.POLLOUT):
                if should_stop():
                    return False
                if self._dead(index):
                    self.send_dropped[index] += 1
                    return True
        try:
            sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.send_dropped[index] += 1
        return True

    def _send_to_replica(self, g: int, members: list[int], frames: list,
                         should_stop: Callable[[], bool]) -> bool:
        """One link of a group: the first with room in round-robin order (see the module
        docstring); ``block`` links wait until one has room, ``drop_oldest`` ones drop when
        none has."""
        while True:
            live = [i for i in members if not self._dead(i)]
            if not live:  # every replica is gone: the runner ends the run
                self.send_dropped[members[0]] += 1
                return True
            start = self._turn[g] % len(live)
            order = live[start:] + live[:start]
            for i in order:
                try:
                    self._sockets[i].send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
                except zmq.Again:
                    continue
                self._turn[g] = live.index(i) + 1
                return True
            if self.links[order[0]].policy != "block":
                self.send_dropped[order[0]] += 1
                return True
            poller = zmq.Poller()
            for i in live:
                poller.register(self._sockets[i], zmq.POLLOUT)
            if not poller.poll(POLL_MS) and should_stop():
                return False

    def send_end(self, timeout_s: float = 2.0, should_stop: Callable[[], bool] = _never) -> bool:
        """Send the EndOfStream marker on every link.

        A ``block`` link waits for room as long as it takes (until ``should_stop()``), like
        any lossless send; a full ``drop_oldest`` link is retried for at most ``timeout_s``.

        Returns
        -------
        bool
            False if some link did not take the marker.
        """
        end = EndOfStream(seq=self.sent, t_source_ns=0)
        deadline = time.monotonic() + timeout_s
        ok = True
        for index, (link, sock) in enumerate(zip(self.links, self._sockets, strict=True)):
            frames = encode(end, link.topic)
            while not self._dead(index):
                if link.policy == "block":
                    if sock.poll(POLL_MS, zmq.POLLOUT):
                        sock.send_multipart(frames, flags=zmq.NOBLOCK)
                        break
                else:
                    try:
                        sock.send_multipart(frames, flags=zmq.NOBLOCK)
                        break
                    except zmq.Again:
                        time.sleep(RETRY_S)
                    if time.monotonic() > deadline:
                        logger.warning("could not send EndOfStream on %s", link.endpoint)
                        ok = False
                        break
                if should_stop():
                    return False
        return ok

    def close(self, linger_ms: int | None = None) -> None:
        """Close the sockets; ``linger_ms=0`` discards anything still queued (abort)."""
        for sock in self._sockets:
            sock.close(linger=linger_ms)
        self._sockets.clear()


class Inlet:
    """Receiving side of all input links of one consumer.

    Parameters
    ----------
    ctx : zmq.Context
    links : sequence of Link
    limits : Limits
        Decoder limits; ``max_total_bytes`` also sets ZMQ_MAXMSGSIZE (a peer that sends more is
        disconnected by ZeroMQ).
    groups : sequence of str, optional
        The producer stage of each link: links with the same group come from the replicas of
        one stage and are merged back into ``seq`` order (see the module docstring); the
        ``seq_gaps`` and ``out_of_order`` of the merged stream are counted on the group's
        first link. Default: every link its own group.
    shared : sequence of bool, optional
        Links that carry a share of their topic (this consumer is one of a stage's replicas):
        their ``seq`` jumps are the other replicas' messages, not gaps, and are not counted.
    raw : bool
        Return :class:`~pipeline.wire.codec.WireMessage` objects (:func:`~pipeline.wire.codec.peek`:
        the header checked, fields and buffers left encoded) instead of decoded messages, for a
        consumer that only forwards them.
    curve : ChainCurve, optional
        Connect as a CURVE client with the chain's key pair (``run.chain_key``).
    """

    def __init__(
        self, ctx: zmq.Context, links: Sequence[Link], limits: Limits = DEFAULT_LIMITS,
        groups: Sequence[str] | None = None, shared: Sequence[bool] | None = None,
        raw: bool = False, curve: ChainCurve | None = None,
    ) -> None:
        self.links = tuple(links)
        self.limits = limits
        self._decode = peek if raw else decode
        self.counters = [LinkCounters() for _ in self.links]
        names = list(groups) if groups is not None else [str(i) for i in range(len(self.links))]
        self._groups = [[i for i, g in enumerate(names) if g == name]
                        for name in dict.fromkeys(names)]
        merged = {i for members in self._groups if len(members) > 1 for i in members}
        # links whose seq order is counted as they arrive (merged ones: as they are released)
        self._count_on_arrival = [
            i not in merged and not (shared is not None and shared[i])
            for i in range(len(self.links))]
        #: Decode errors: all counted, logged through a rate limiter (never silently dropped)
        self.warnings = LimitedWarnings(logger)
        self._queues: list[deque[tuple[int, Message]]] = [deque() for _ in self.links]
        self._eos = [False] * len(self.links)
        self._arrival = itertools.count()
        self._sockets: list[zmq.Socket] = []
        try:
            for link in self.links:
                lossless = link.policy == "block"
                sock = ctx.socket(zmq.PULL if lossless else zmq.SUB)
                self._sockets.append(sock)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, link.hwm)
                sock.setsockopt(zmq.MAXMSGSIZE, limits.max_total_bytes)
                if not lossless:
                    sock.setsockopt(zmq.SUBSCRIBE, link.topic.encode())
                if curve is not None:
                    curve.client(sock)
                sock.connect(link.endpoint)
        except zmq.ZMQError:
            self.close()
            raise

    @property
    def ended(self) -> bool:
        """True when every link has delivered its EndOfStream and all its messages."""
        return all(self._eos) and not any(self._queues)

    def end_link(self, index: int) -> None:
        """Treat link ``index`` as ended (its producer is gone without an EndOfStream)."""
        self._eos[index] = True

    def pending(self) -> int:
        """Messages received and queued but not yet returned by :meth:`recv`."""
        return sum(len(q) for q in self._queues)

    def recv(self, timeout_ms: int) -> tuple[int, Message | WireMessage] | None:
        """Return the next message, waiting at most ``timeout_ms``.

        Returns
        -------
        (link index, message) or None
            None on timeout. Messages come back in arrival order, except that those of a
            group of replicas come back in ``seq`` order.
        """
        self.poll(0)
        got = self._next()
        if got is None and timeout_ms > 0:
            self.poll(timeout_ms)
            got = self._next()
        return got

    def _next(self) -> tuple[int, Message] | None:
        """Pop the earliest-arrived message that may be released (see :meth:`recv`)."""
        best: tuple[int, int] | None = None  # (arrival, link index)
        for members in self._groups:
            if len(members) == 1:
                queue = self._queues[members[0]]
                if queue:
                    best = min(best or (queue[0][0], members[0]), (queue[0][0], members[0]))
                continue
            if any(not self._queues[i] and not self._eos[i] for i in members):
                continue  # a live replica may still send a smaller seq
            heads = [(self._queues[i][0][1].seq, i) for i in members if self._queues[i]]
            if heads:
                index = min(heads)[1]
                arrival = self._queues[index][0][0]
                best = min(best or (arrival, index), (arrival, index))
        if best is None:
            return None
        index = best[1]
        msg = self._queues[index].popleft()[1]
        if not self._count_on_arrival[index]:
            members = next(m for m in self._groups if index in m)
            if len(members) > 1:
                self.counters[members[0]].count_seq(msg.seq)
        return index, msg

    def poll(self, timeout_ms: int) -> int:
        """Move what has arrived (waiting at most ``timeout_ms``) into the receive queues.

        A ``block`` link takes one message when its queue is empty; a ``drop_oldest`` link
        drains its socket. Returns the number of messages queued (:meth:`pending`).
        """
        poller = zmq.Poller()  # a block link with a message waiting takes no more
        for index, (link, sock) in enumerate(zip(self.links, self._sockets, strict=True)):
            if link.policy != "block" or not self._queues[index]:
                poller.register(sock, zmq.POLLIN)
        if not poller.sockets:
            return self.pending()
        events = dict(poller.poll(timeout_ms))
        for index, (link, sock) in enumerate(zip(self.links, self._sockets, strict=True)):
            if sock not in events:
                continue
            if link.policy == "block":
                self._take(index, sock)  # registered only while its queue was empty
            else:
                for _ in range(MAX_DRAIN):
                    self._take(index, sock)
                    if not sock.poll(0, zmq.POLLIN):
                        break
        return self.pending()

    def _take(self, index: int, sock: zmq.Socket) -> None:
        frames = sock.recv_multipart(copy=True)
        counters = self.counters[index]
        try:
            msg = self._decode(frames, self.limits)
        except DecodeError as exc:
            counters.decode_errors += 1
            endpoint = self.links[index].endpoint
            self.warnings.warn(endpoint, f"link {endpoint}: dropped a malformed message: {exc}")
            return
        if isinstance(msg, EndOfStream):
            self._eos[index] = True
            return
        counters.received += 1
        if self._count_on_arrival[index]:
            counters.count_seq(msg.seq)
        queue = self._queues[index]
        if self.links[index].policy == "drop_oldest" and len(queue) >= self.links[index].depth:
            queue.popleft()
            counters.dropped += 1
        queue.append((next(self._arrival), msg))

    def close(self) -> None:
        """Say what the warning limiter has not told yet, and close the sockets (linger 0: a
        consumer never needs to flush anything)."""
        self.warnings.flush()
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
