"""The control plane: how the conductor (the runner) and the stage processes signal each other.

Everything travels over one ZeroMQ ROUTER/DEALER pair, so a stage process may run on any host
that reaches the conductor's endpoint (``run.control``, e.g. ``tcp://10.0.0.1:5590``; by
default an ipc socket in the run's temp folder):

- the :class:`Conductor` binds a ROUTER; every stage instance connects a DEALER whose routing
  id is its instance name (``detector``, ``unmixer.1``, ``_digest``);
- a stage sends *reports* ``[kind, payload]`` (msgpack): ``hello`` (its plan digest, pid and
  host), ``ready``, ``stats`` (heartbeat), ``done``, ``final`` (the exact figures of a stage
  stopped unfinished), ``error``, ``set`` (it raised a flag: ``abort``, ``ended``,
  ``drained``), ``alive`` (keepalive when it had nothing else to say) and ``exit`` (its exit
  code, last);
- the conductor sends the *run state* ``{go, stop, abort, ended, drained, dead}`` to every
  stage it has heard from, whenever it changes and every :data:`KEEPALIVE_S` otherwise.

The flags: ``go`` (every instance is ready: start), ``stop`` (graceful: the source stops and
the chain drains), ``abort`` (every instance leaves at once), and per instance ``ended`` (it
has sent, or tried to send, its EndOfStream markers: a consumer whose marker was lost on a
``drop_oldest`` link ends that link on it), ``drained`` (it has received everything on its
inputs: its producers keep their sockets open until then, so nothing queued is lost on exit)
and ``dead`` (a replica the run goes on without: its producers stop sending to it).

Every flag goes from unset to set only, so a stage keeps the union of every state it received
and of its own flags: messages may cross, nothing is ever unset. Silence is failure: the
conductor takes a stage that has said nothing for ``run.peer_timeout_s`` as lost, and a stage
whose conductor has been silent that long aborts (its run can no longer finish). Payloads are
msgpack (never pickle); a report that does not decode, or comes from a name the chain does not
have, is counted and dropped.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from pipeline.wire.curve import ChainCurve
from stages.ratelimit import LimitedWarnings

logger = logging.getLogger(__name__)

#: Most seconds between two messages on an otherwise quiet control link, each way.
KEEPALIVE_S = 0.5
#: Largest control message accepted (bytes): a stage summary is a few kB.
MAX_CONTROL_BYTES = 4 << 20
#: Linger of a stage's control socket: how long its last reports may take to leave (ms).
REPORT_LINGER_MS = 2000
#: The set-once flags of a run: global ones, and per-instance ones.
GLOBAL_FLAGS = ("go", "stop", "abort")
INSTANCE_FLAGS = ("ended", "drained", "dead")


def _plain(value: Any) -> Any:
    """msgpack hook: numpy scalars and arrays as Python numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot send a {type(value).__name__} on the control link")


def pack(kind: str, payload: Any) -> bytes:
    """One control message: ``[kind, payload]`` as msgpack."""
    return msgpack.packb([kind, payload], default=_plain, use_bin_type=True)


def unpack(data: bytes) -> tuple[str, Any]:
    """Inverse of :func:`pack`; raises ``ValueError`` on anything malformed."""
    try:
        kind, payload = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # (sizes: MAXMSGSIZE)
        raise ValueError(f"malformed control message: {exc}") from exc
    if not isinstance(kind, str):
        raise ValueError(f"malformed control message: kind {kind!r} is not a string")
    return kind, payload


class RunState:
    """The set-once flags of a run (see the module docstring), as plain sets."""

    def __init__(self) -> None:
        self.flags: set[str] = set()  # the global flags that are set
        self.instances: dict[str, set[str]] = {k: set() for k in INSTANCE_FLAGS}

    def is_set(self, flag: str, name: str | None = None) -> bool:
        return flag in self.flags if name is None else name in self.instances[flag]

    def set(self, flag: str, name: str | None = None) -> bool:
        """Set a flag; returns True if it was not set before."""
        if self.is_set(flag, name):
            return False
        if name is None:
            if flag not in GLOBAL_FLAGS:
                raise ValueError(f"unknown flag {flag!r}")
            self.flags.add(flag)
        else:
            self.instances[flag].add(name)
        return True

    def merge(self, data: Any) -> None:
        """Add a received state (``as_dict``); raises ``ValueError`` if it is malformed."""
        if not isinstance(data, dict):
            raise ValueError("malformed run state")
        for flag in GLOBAL_FLAGS:
            if data.get(flag):
                self.flags.add(flag)
        for flag in INSTANCE_FLAGS:
            names = data.get(flag, [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"malformed run state: {flag}")
            self.instances[flag].update(names)

    def as_dict(self) -> dict[str, Any]:
        return {**{f: f in self.flags for f in GLOBAL_FLAGS},
                **{f: sorted(n) for f, n in self.instances.items()}}


# ---------------------------------------------------------------------------------------------
# The conductor's side.


class Conductor:
    """The runner's end of the control plane: receives the stages' reports, keeps and sends
    the run state.

    Parameters
    ----------
    ctx : zmq.Context
    endpoint : str
        Where to bind the ROUTER (``ipc://…`` or ``tcp://host:port``).
    names : sequence of str
        The instance names of the chain; reports from any other name are counted and dropped.
    curve : ChainCurve, optional
        CURVE with the chain's key pair (``run.chain_key``).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, names: list[str],
                 curve: ChainCurve | None = None) -> None:
        self.names = set(names)
        self.state = RunState()
        self.heard: dict[str, float] = {}  # instance -> monotonic time of its last message
        #: Control messages dropped: malformed, or from a name the chain does not have.
        self.rejected = 0
        self._warnings = LimitedWarnings(logger)
        self._sock = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted stage takes its name back
        if curve is not None:
            curve.server(self._sock)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise OSError(f"run.control: cannot bind {endpoint}: {exc}; choose a free port, "
                          f"or an address of this host") from exc
        self._sent = 0.0

    def set(self, flag: str, name: str | None = None) -> None:
        """Set a flag of the run and tell every stage at once."""
        if self.state.set(flag, name):
            self._broadcast()

    def poll(self, timeout_s: float, fds: Sequence[int] = ()) -> Iterator[tuple[str, str, Any]]:
        """Yield the reports ``(instance, kind, payload)`` that arrive within ``timeout_s``
        (all those already queued, or the first to come); ``set`` reports are applied to the
        run state (and sent on) before they are yielded. The wait also ends when one of the
        file descriptors ``fds`` (e.g. process sentinels) becomes readable."""
        if time.monotonic() - self._sent >= KEEPALIVE_S:
            self._broadcast()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        for fd in fds:
            poller.register(fd, zmq.POLLIN)
        if not poller.poll(int(timeout_s * 1000)):
            return
        changed = False
        while self._sock.poll(0):
            frames = self._sock.recv_multipart()
            report = self._accept(frames)
            if report is None:
                continue
            name, kind, payload = report
            if kind == "set":
                changed |= self._apply(name, payload)
            yield report
        if changed:
            self._broadcast()

    def _accept(self, frames: list[bytes]) -> tuple[str, str, Any] | None:
        try:
            name = frames[0].decode()
            if name not in self.names:
                raise ValueError(f"a stage named {name!r} is not in this chain (its stages: "
                                 f"{sorted(self.names)}); start it with the same config")
            if len(frames) != 2:
                raise ValueError(f"{len(frames)} frames instead of 2")
            kind, payload = unpack(frames[1])
        except (ValueError, UnicodeDecodeError) as exc:
            self.rejected += 1
            self._warnings.warn("rejected", f"control message dropped: {exc}")
            return None
        first = name not in self.heard
        self.heard[name] = time.monotonic()
        if first or kind == "hello":  # (a restarted stage says hello again)
            self._send_state(name)
        return name, kind, payload

    def _apply(self, name: str, payload: Any) -> bool:
        """A stage raised a flag: ``abort``, or its own ``ended``/``drained``."""
        if payload == "abort":
            return self.state.set("abort")
        if payload in ("ended", "drained"):
            return self.state.set(payload, name)
        self.rejected += 1
        self._warnings.warn("rejected", f"control: stage {name!r} raised an unknown flag "
                                        f"{payload!r}")
        return False

    def _send_state(self, name: str) -> None:
        self._sock.send_multipart([name.encode(), pack("state", self.state.as_dict())])

    def _broadcast(self) -> None:
        data = pack("state", self.state.as_dict())
        for name in self.heard:
            self._sock.send_multipart([name.encode(), data])
        self._sent = time.monotonic()

    def close(self) -> None:
        """Send the final state once more, then close (a second call does nothing)."""
        if self._sock.closed:
            return
        self._broadcast()
        self._sock.close(linger=200)


# ---------------------------------------------------------------------------------------------
# A stage's side.


class _StateFlag:
    """One flag of the run seen from a stage: ``is_set`` / ``set`` / ``wait`` like an Event."""

    def __init__(self, client: ControlClient, flag: str, name: str | None = None) -> None:
        self._client, self._flag, self._name = client, flag, name

    def is_set(self) -> bool:
        self._client.refresh()
        return self._client.state.is_set(self._flag, self._name)

    def set(self) -> None:
        self._client.raise_flag(self._flag, self._name)

    def wait(self, timeout_s: float) -> bool:
        """Whether the flag is set, waiting up to ``timeout_s`` for it."""
        deadline = time.monotonic() + timeout_s
        while not self._client.state.is_set(self._flag, self._name):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._client.refresh(min(left, KEEPALIVE_S))
        return True


class _FlagsByName:
    """``flags[name]``: a per-instance flag (``ended``, ``drained``, ``dead``) of any stage."""

    def __init__(self, client: ControlClient, flag: str) -> None:
        self._client, self._flag = client, flag

    def __getitem__(self, name: str) -> _StateFlag:
        return _StateFlag(self._client, self._flag, name)


class ControlClient:
    """A stage's end of the control plane: the flags of the run and a ``report`` call.

    Attributes ``go``, ``stop``, ``abort`` (flags) and ``ended``, ``drained``, ``dead``
    (``[instance name]`` -> flag) behave like the events of a multiprocessing run; every look
    at a flag first takes what the conductor sent (no wait) and sends a keepalive when due.

    Parameters
    ----------
    ctx : zmq.Context
    endpoint : str
        The conductor's ``run.control`` endpoint.
    name : str
        This instance's name (its routing id).
    peer_timeout_s : float
        Silence of the conductor after which the stage aborts.
    first_contact_s : float
        How long to wait for the conductor's first answer before aborting.
    curve : ChainCurve, optional
        CURVE with the chain's key pair (``run.chain_key``).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str, peer_timeout_s: float,
                 first_contact_s: float, curve: ChainCurve | None = None) -> None:
        self.name = name
        self.state = RunState()
        self.peer_timeout_s, self.first_contact_s = peer_timeout_s, first_contact_s
        self.go, self.stop = _StateFlag(self, "go"), _StateFlag(self, "stop")
        self.abort = _StateFlag(self, "abort")
        self.ended, self.drained = _FlagsByName(self, "ended"), _FlagsByName(self, "drained")
        self.dead = _FlagsByName(self, "dead")
        #: Why the stage gave up on the conductor (None while it answers).
        self.lost: str | None = None
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self._sock.setsockopt(zmq.LINGER, REPORT_LINGER_MS)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        if curve is not None:
            curve.client(self._sock)
        self._sock.connect(endpoint)
        self._endpoint = endpoint
        self._started = time.monotonic()
        self._heard: float | None = None
        self._sent = 0.0

    def report(self, kind: str, payload: Any = None) -> None:
        """Send a report to the conductor (queued while it is not reachable yet; dropped
        only if a thousand are queued already)."""
        try:
            self._sock.send(pack(kind, payload), zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("control report %r dropped: the conductor does not take them", kind)
        self._sent = time.monotonic()

    def raise_flag(self, flag: str, name: str | None = None) -> None:
        """Set ``abort`` or this stage's own ``ended``/``drained``, here and at the conductor."""
        if self.state.set(flag, name):
            self.report("set", flag)

    def refresh(self, timeout_s: float = 0.0) -> None:
        """Take every state the conductor sent (waiting up to ``timeout_s`` for the first),
        send a keepalive when due, and notice a silent conductor."""
        if self._sock.poll(int(timeout_s * 1000)):
            while self._sock.poll(0):
                try:
                    kind, payload = unpack(self._sock.recv())
                    if kind != "state":
                        raise ValueError(f"unexpected kind {kind!r}")
                    self.state.merge(payload)
                except ValueError as exc:
                    logger.warning("control message from the conductor dropped: %s", exc)
                    continue
                self._heard = time.monotonic()
        now = time.monotonic()
        if self._heard is not None and now - self._sent >= KEEPALIVE_S:
            self.report("alive")  # (only once the conductor answered: nothing piles up)
        self._check_silence(now)

    def _check_silence(self, now: float) -> None:
        if self.lost is not None:
            return
        if self._heard is None and now - self._started > self.first_contact_s:
            self.lost = (f"no conductor answered at {self._endpoint} within "
                         f"{self.first_contact_s:.0f} s; start `python -m pipeline run` with "
                         f"the same config, or check run.control")
        elif self._heard is not None and now - self._heard > self.peer_timeout_s:
            self.lost = (f"the conductor at {self._endpoint} has been silent for "
                         f"{now - self._heard:.1f} s (run.peer_timeout_s = "
                         f"{self.peer_timeout_s})")
        if self.lost is not None:
            logger.error("%s: aborting", self.lost)
            self.state.set("abort")

    def aborted(self) -> bool:
        """True once the run is aborted: by the conductor or a peer, by the loss of the
        conductor, or because the process that spawned this one is gone."""
        if self.abort.is_set():
            return True
        parent = multiprocessing.parent_process()
        if parent is not None and not parent.is_alive():
            self.raise_flag("abort")
            return True
        return False

    def close(self) -> None:
        """Close the socket once its last reports have left (or ``REPORT_LINGER_MS``)."""
        self._sock.close()
