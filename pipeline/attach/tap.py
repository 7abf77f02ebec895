"""The tap: every topic of a run re-published on one stable, documented XPUB endpoint.

Anyone may attach a SUB socket to ``run.publish.endpoint`` (``python -m pipeline subscribe``,
``examples/client.py``, an external detector reading frames) and subscribe by topic prefix.
Messages are the multipart wire format of ``docs/wire-format.md``, identical to the links
between stages (the runner's stamps included).

Attaching is best-effort by nature: a subscriber gets nothing sent before its subscription
reached the tap (the slow-joiner race), and a subscriber that falls ``hwm`` messages behind
loses the newest ones, which it sees as ``seq`` gaps (the tap never slows the pipeline down:
ZeroMQ drops for that subscriber only, silently). ``wait_subscribers: N`` makes the run wait,
before the source starts, until N subscriptions arrived (one per topic a client subscribes to;
an empty prefix counts once), for clients that must see every message.

So that a subscriber can tell its own losses from the chain's, the tap (whose inputs are
lossless) announces every ``seq`` gap of a topic with a :class:`~stages.messages.Skipped`
notice on that topic, just before the message after the gap (and, at the end of the run,
for a topic whose last messages never came, up to the run's last seq); a gap without a
notice is the subscriber's own loss. At the end of a run it publishes an
:class:`~stages.messages.EndOfStream` on each of its topics, whose ``seq`` is the number of
messages it published there, so a subscriber can stop at once and count what it missed.
While the chain is idle (nothing to publish for ``heartbeat_s``) it publishes a
:class:`~stages.messages.Stats` heartbeat on every topic, so a subscriber can tell a quiet
chain from a dead one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

import zmq

from pipeline.wire.codec import WireMessage, encode
from pipeline.wire.curve import CurveKeys, close_served, serve
from stages.base import TopicSink
from stages.messages import EndOfStream, Message, Skipped, Stats

logger = logging.getLogger(__name__)

#: How long closing the tap waits for queued messages (the end markers) to leave (ms).
END_LINGER_MS = 1000


@dataclasses.dataclass(frozen=True)
class PublisherConfig:
    """Options of :class:`Publisher`.

    Attributes
    ----------
    endpoint : str
        Where to bind, e.g. ``tcp://127.0.0.1:5555`` or ``ipc:///tmp/csist.pub``.
    hwm : int
        Messages queued per subscriber before new ones are dropped for it.
    wait_subscribers : int
        Subscriptions to wait for in ``start()`` (0: none).
    wait_s : float
        Longest wait for them; the run then goes on with a warning.
    curve : CurveKeys or None
        CURVE encryption and client allow-list (:mod:`pipeline.wire.curve`); None: plain.
    topics : tuple of str
        The topics the tap carries: each gets an EndOfStream at the end of the run, even if
        nothing was published on it (topics that only appear on the way get one too).
    heartbeat_s : float or None
        After this long without a message, a ``csist.Stats`` heartbeat goes out on every
        topic, and again every ``heartbeat_s`` while the chain stays idle (one process per
        stage only); None: no heartbeat.
    """

    endpoint: str
    hwm: int = 64
    wait_subscribers: int = 0
    wait_s: float = 60.0
    curve: CurveKeys | None = None
    topics: tuple[str, ...] = ()
    heartbeat_s: float | None = 1.0


class Publisher(TopicSink):
    """Sink that re-publishes every message on its topic (see the module docstring). In its
    own process it forwards the frames as they arrived (``RAW_INPUT``: nothing decoded or
    encoded again, the bytes the links carried)."""

    Config = PublisherConfig
    RAW_INPUT = True

    def __init__(self, config: PublisherConfig) -> None:
        super().__init__(config)
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._auth: Any = None
        #: The bound endpoint (a ``tcp://host:*`` endpoint resolved to its port).
        self.endpoint = config.endpoint
        self.sent = 0
        self.subscriptions = 0
        #: Messages published per topic, and the last seq of each.
        self.published: dict[str, int] = dict.fromkeys(config.topics, 0)
        self._last_seq: dict[str, int] = {}
        #: Seqs announced as skipped (:class:`Skipped` notices), all topics.
        self.skipped = 0
        self.heartbeats = 0
        self._last_sent = time.monotonic()

    def start(self) -> None:
        cfg = self.config
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        try:
            self._bind()
        except BaseException:
            self.stop()
            raise
        logger.info("publishing every topic on %s", self.endpoint)
        if cfg.wait_subscribers:
            self._wait_for_subscribers()

    def _bind(self) -> None:
        cfg, sock = self.config, self._sock
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, cfg.hwm)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, not just the first
        if cfg.curve is not None:
            self._auth = serve(self._ctx, sock, cfg.curve)
        elif cfg.endpoint.startswith("tcp://") and not cfg.endpoint.startswith(
            ("tcp://127.", "tcp://localhost:")
        ):
            logger.warning("publishing on %s without CURVE: anyone who reaches it can read "
                           "every topic (set run.curve)", cfg.endpoint)
        try:
            sock.bind(cfg.endpoint)
        except zmq.ZMQError as exc:
            raise RuntimeError(f"cannot bind the tap on {cfg.endpoint}: {exc}; choose another "
                               f"run.publish.endpoint") from exc
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _read_subscriptions(self, timeout_ms: int) -> None:
        assert self._sock is not None
        while self._sock.poll(timeout_ms, zmq.POLLIN):
            if self._sock.recv()[:1] == b"\x01":
                self.subscriptions += 1
            timeout_ms = 0

    def _wait_for_subscribers(self) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.wait_s
        while self.subscriptions < cfg.wait_subscribers and time.monotonic() < deadline:
            self._read_subscriptions(100)
        if self.subscriptions < cfg.wait_subscribers:
            logger.warning("tap %s: %d of %d subscriptions after %.0f s; starting anyway",
                           cfg.endpoint, self.subscriptions, cfg.wait_subscribers, cfg.wait_s)

    def process_topic(self, topic: str, msg: Message | WireMessage) -> Iterable[Message]:
        if self._sock is None:
            raise RuntimeError("Publisher.start() was not called")
        self._read_subscriptions(0)  # keep the subscription queue short
        last = self._last_seq.get(topic)
        if last is not None and msg.seq > last + 1:
            self._announce_skipped(topic, last + 1, msg.seq - 1, msg.t_source_ns)
        frames = msg.frames if isinstance(msg, WireMessage) else encode(msg, topic)
        self._sock.send_multipart(frames, copy=False)  # XPUB never blocks
        self._last_sent = time.monotonic()
        self._last_seq[topic] = msg.seq
        self.published[topic] = self.published.get(topic, 0) + 1
        self.sent += 1
        return ()

    def _announce_skipped(self, topic: str, first: int, last: int, t_source_ns: int) -> None:
        notice = Skipped(seq=first, t_source_ns=t_source_ns, last=last)
        self._sock.send_multipart(encode(notice, topic), copy=False)
        self.skipped += last - first + 1

    def idle(self) -> Iterable[Message]:
        """A heartbeat on every topic after ``heartbeat_s`` without a message: ``Stats`` with
        ``seq`` = heartbeats so far, ``t_source_ns`` = Unix time, ``stage`` = "tap",
        ``msgs_out`` = messages published so far."""
        wait = self.config.heartbeat_s
        if self._sock is None or wait is None or time.monotonic() - self._last_sent < wait:
            return ()
        beat = Stats(seq=self.heartbeats, t_source_ns=time.time_ns(), stage="tap",
                     msgs_in=self.sent, msgs_out=self.sent)
        for topic in self.published:
            self._sock.send_multipart(encode(beat, topic), copy=False)
        self.heartbeats += 1
        self._last_sent = time.monotonic()
        return ()

    def flush(self) -> Iterable[Message]:
        """End of the run: a Skipped notice on each topic whose last seq is behind the last
        seq of the run (the newest on any topic), then one EndOfStream per topic (``seq`` =
        messages published on it)."""
        if self._sock is not None:
            end = max(self._last_seq.values(), default=None)
            for topic, last in self._last_seq.items():
                if last < end:
                    self._announce_skipped(topic, last + 1, end, 0)
            for topic, count in self.published.items():
                self._sock.send_multipart(encode(EndOfStream(seq=count, t_source_ns=0), topic),
                                          copy=False)
            self._sock.setsockopt(zmq.LINGER, END_LINGER_MS)  # let the end markers leave
        return ()

    def stop(self) -> None:
        close_served(self._sock, self._auth, self._ctx)
        self._sock = self._auth = self._ctx = None

    def summary(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "sent": self.sent,
                "subscriptions": self.subscriptions, "skipped": self.skipped}
