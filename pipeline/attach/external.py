"""A stage whose work is done by another program: the chain's gate for an external process.

``kind: external_input`` binds a PULL socket on ``endpoint``; any number of outside programs
connect PUSH sockets there and send messages of one schema (e.g. ``csist.Blobs`` from an
external detector) in the wire format of ``docs/wire-format.md``. For every message the stage
receives from the chain (typically a frame), it waits up to ``timeout_s`` for the outside
message with the same ``seq`` and emits it on its output topic, stamped with the chain's own
``t_source_ns`` (time always comes from the chain's headers). Outside messages for later seqs
are kept (at most ``max_early`` of them, for seqs at most ``max_early`` ahead: further ones
are counted ``too_early``, the oldest kept beyond the count ``evicted``); ones for seqs already
passed are dropped and counted (``late``). Blobs that are not valid (:meth:`Blob.is_valid`)
are dropped before anything, the tap included, sees them (``invalid_blobs``). When nothing
arrives in time, the stage emits an empty message of the schema when the schema has one
(Blobs, Points, Tracks) and counts a ``missed`` seq, so the chain keeps one message per frame
and never stalls. Every count is logged through a rate limiter.

Wiring (``configs/external-detector.yaml``): the outside detector reads frames from the tap
(``run.publish``), this stage turns its blobs into the ``external_blobs`` topic, and a
``detector`` of ``kind: external`` checks them and publishes ``blobs`` for the cropper.
Bind (the stable side) is here, so outside programs may start, stop and restart at any time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline.wire.codec import DEFAULT_LIMITS, DecodeError, decode
from pipeline.wire.curve import CurveKeys, close_served, serve
from stages.base import Stage
from stages.messages import MESSAGE_TYPES, Blobs, Message, frame_header
from stages.ratelimit import LimitedWarnings

logger = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class ExternalInputConfig:
    """Options of :class:`ExternalInput`.

    Attributes
    ----------
    endpoint : str
        Where to bind the PULL socket, e.g. ``tcp://127.0.0.1:5556``.
    schema : str
        Schema the outside program sends (e.g. ``csist.Blobs``).
    timeout_s : float
        Longest wait for the answer to one chain message.
    max_early : int
        Outside messages kept for seqs the chain has not reached yet.
    hwm : int
        ZeroMQ receive high-water mark.
    curve : CurveKeys or None
        CURVE encryption and client allow-list (:mod:`pipeline.wire.curve`); None: plain.
    """

    endpoint: str
    schema: str = "csist.Blobs"
    timeout_s: float = 5.0
    max_early: int = 64
    hwm: int = 64
    curve: CurveKeys | None = None

    def __post_init__(self) -> None:
        if self.schema not in MESSAGE_TYPES:
            raise ValueError(f"unknown schema {self.schema!r}; expected one of "
                             f"{sorted(MESSAGE_TYPES)}")
        if self.timeout_s <= 0 or self.max_early < 1 or self.hwm < 1:
            raise ValueError("timeout_s must be > 0, max_early and hwm >= 1")


class ExternalInput(Stage):
    """Chain message seq n → the outside program's message for seq n (module docstring)."""

    Config = ExternalInputConfig
    INPUTS = ("frames",)
    OUTPUT = "external_blobs"

    def __init__(self, config: ExternalInputConfig) -> None:
        super().__init__(config)
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._auth: Any = None
        self._early: OrderedDict[int, Message] = OrderedDict()
        self._monitor: zmq.Socket | None = None
        self.counts = {"received": 0, "missed": 0, "late": 0, "too_early": 0, "evicted": 0,
                       "invalid_blobs": 0, "decode_errors": 0, "wrong_schema": 0,
                       "disconnects": 0}
        #: Problems: all counted, logged through a rate limiter (never silently dropped)
        self.warnings = LimitedWarnings(logger)

    def start(self) -> None:
        cfg = self.config
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.RCVHWM, cfg.hwm)
            self._sock.setsockopt(zmq.MAXMSGSIZE, DEFAULT_LIMITS.max_total_bytes)
            # ZeroMQ drops, without a word, the connection of a peer that sends more than
            # MAXMSGSIZE: its disconnects are the only trace, so they are watched
            self._monitor = self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            if cfg.curve is not None:
                self._auth = serve(self._ctx, self._sock, cfg.curve)
            try:
                self._sock.bind(cfg.endpoint)
            except zmq.ZMQError as exc:
                raise RuntimeError(f"cannot bind the external input on {cfg.endpoint}: "
                                   f"{exc}") from exc
        except BaseException:
            self.stop()
            raise
        logger.info("waiting for %s messages on %s", cfg.schema, cfg.endpoint)

    def _count(self, kind: str, text: str, n: int = 1) -> None:
        """Count ``n`` problems of ``kind`` and log them through the rate limiter."""
        self.counts[kind] += n
        self.warnings.warn(kind, f"external input {self.config.endpoint}: {text}")

    def _watch_disconnects(self) -> None:
        """Count the peer connections ZeroMQ dropped since the last call."""
        while self._monitor is not None and self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor)
            self.counts["disconnects"] += 1
            # not a warning: a peer that closes (a detector that exits) disconnects too
            logger.info("external input %s: a peer disconnected from %s (it closed, or it sent "
                        "a message over the %d MiB limit, which is lost; a PUSH peer then "
                        "reconnects)", self.config.endpoint, event["endpoint"].decode(),
                        DEFAULT_LIMITS.max_total_bytes >> 20)

    def _receive(self, timeout_ms: int) -> Message | None:
        """One decoded outside message of the right schema, or None."""
        assert self._sock is not None
        ready = self._sock.poll(timeout_ms, zmq.POLLIN)
        self._watch_disconnects()
        if not ready:
            return None
        frames = self._sock.recv_multipart(copy=True)
        try:
            msg = decode(frames)
        except DecodeError as exc:
            self._count("decode_errors", f"dropped a malformed message: {exc}")
            return None
        if msg.SCHEMA != self.config.schema:
            self._count("wrong_schema", f"dropped a {msg.SCHEMA} message; expected "
                                        f"{self.config.schema}")
            return None
        if isinstance(msg, Blobs):  # checked before the chain (and the tap) sees them
            valid = tuple(b for b in msg.blobs if b.is_valid())
            if len(valid) < len(msg.blobs):
                bad = len(msg.blobs) - len(valid)
                self._count("invalid_blobs", f"seq {msg.seq}: dropped {bad} invalid blobs", bad)
                msg = dataclasses.replace(msg, blobs=valid)
        return msg

    def _wait_for(self, seq: int) -> Message | None:
        if seq in self._early:
            return self._early.pop(seq)
        deadline = time.monotonic() + self.config.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = self._receive(max(1, int(left * 1000)))
            if msg is None:
                continue
            if msg.seq == seq:
                return msg
            if msg.seq < seq:
                self._count("late", f"seq {msg.seq} arrived after the chain passed it")
            elif msg.seq > seq + self.config.max_early:
                self._count("too_early", f"seq {msg.seq} is more than max_early = "
                                         f"{self.config.max_early} ahead of the chain's {seq}")
            else:
                self._early[msg.seq] = msg
                while len(self._early) > self.config.max_early:
                    evicted, _ = self._early.popitem(last=False)
                    self._count("evicted", f"seq {evicted} dropped: more than max_early = "
                                           f"{self.config.max_early} messages waiting")
        return None

    def process(self, msg: Message) -> Iterable[Message]:
        if self._sock is None:
            raise RuntimeError("ExternalInput.start() was not called")
        for old in [s for s in self._early if s < msg.seq]:
            del self._early[old]
        answer = self._wait_for(msg.seq)
        if answer is not None:
            self.counts["received"] += 1
            return [dataclasses.replace(answer, **frame_header(msg), stamps={})]
        self._count("missed", f"nothing for seq {msg.seq} within {self.config.timeout_s} s")
        try:
            return [MESSAGE_TYPES[self.config.schema](**frame_header(msg))]
        except TypeError:  # the schema has required fields (arrays): nothing to emit
            return []

    def stop(self) -> None:
        if self._monitor is not None:
            self._watch_disconnects()
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.warnings.flush()
        close_served(self._sock, self._auth, self._ctx)
        self._sock = self._auth = self._ctx = None

    def summary(self) -> dict[str, Any]:
        return dict(self.counts)

    def input_counters(self) -> dict[str, int]:
        """The outside messages that could not be decoded: the stage row's ``decode_errors``
        (the same number as ``decode_errors`` in this stage's summary)."""
        return {"decode_errors": self.counts["decode_errors"]}
