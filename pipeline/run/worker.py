"""One stage in its own process, behind ZeroMQ links (the child side of ``run_processes``).

Life of a worker: build and ``start()`` the stage, open its links, wait until every output link
has its consumer, report ``ready`` and wait for ``go``; then loop (source: iterate; other
stages: receive, process, send) until the stream ends, ``flush()``, send EndOfStream on every
output link, report ``done`` with its statistics, and exit. Every wait is a poll of at most
:data:`~pipeline.wire.bus.POLL_MS` that also checks the run's ``abort`` flag, so a failure
anywhere stops every worker within a fraction of a second.

The worker talks to the conductor over the control plane (:mod:`pipeline.run.control`, a
ZeroMQ DEALER to the runner's ``run.control`` endpoint, so the worker may live on another
host): it reports ``hello``, ``ready``, ``stats`` heartbeats, ``done`` (``{"stats": ...,
"summary": ...}``), ``final`` or ``error`` (``{"error": "Type: message", "traceback": text, or
None for an error that names its own fix}``) and ``exit`` (its exit code), and reads the run's
flags from it. The runner spawns workers with :func:`main`; ``python -m pipeline stage``
runs one in its own process anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from pipeline.attach.trace import SeqTrace, write_trace
from pipeline.run import stage_calls
from pipeline.run.control import ControlClient
from pipeline.run.report import StageStats, percentiles_ms
from pipeline.wire.bus import POLL_MS, Inlet, Link, Outlet
from pipeline.wire.codec import Limits
from pipeline.wire.curve import ChainCurve
from stages.messages import Message

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (picklable).

    Attributes
    ----------
    name : str
        Stage name.
    cls : type
        Stage class (pickled by reference: the child imports only its module).
    config : dataclass instance
        Validated stage config.
    inputs : tuple of Link
        Input links (empty for the source).
    producers : tuple of str
        Producer stage of each input link.
    outputs : tuple of Link
        Output links (one per consumer of the output topic).
    consumers : tuple of str
        Stage names reading the output topic.
    frames : int or None
        Source only: stop after this many messages.
    rate_hz : float or None
        Source only: pace the messages.
    limits : Limits
        Decoder limits of the input links.
    ready_timeout_s : float
        How long to wait for the output links' consumers.
    heartbeat_s : float
        Interval of the ``stats`` heartbeats.
    log_level : int
    trace_dir : str or None
        Where to write the stage's input trace before its EndOfStream markers
        (:mod:`pipeline.attach.trace`); None writes none.
    replay_inputs : SeqTrace or None
        The only (topic, seq) inputs to process (lossless replay of a traced recording).
    output_groups : tuple of str
        The consumer stage of each output link (the links to a stage's replicas share one:
        each message goes to one of them); empty: each link its own group.
    input_groups : tuple of str
        The group of each input link (its topic: the links from a stage's replicas are merged
        back into seq order); empty: each link its own group.
    replica : bool
        This process is one of its stage's replicas (its input carries a share of the stream).
    control : str
        The conductor's control endpoint (:mod:`pipeline.run.control`).
    peer_timeout_s : float
        Silence of the conductor after which the worker aborts.
    plan_digest : str
        Digest of the chain's plan; the conductor refuses a worker whose digest differs
        (started with another config).
    chain_key : str or None
        The chain's CURVE key pair file (``run.chain_key``): CURVE on every link and on the
        control link; None: plain.
    """

    name: str
    cls: type
    config: Any
    inputs: tuple[Link, ...]
    producers: tuple[str, ...]
    outputs: tuple[Link, ...]
    consumers: tuple[str, ...]
    frames: int | None
    rate_hz: float | None
    limits: Limits
    ready_timeout_s: float
    heartbeat_s: float
    log_level: int = logging.WARNING
    trace_dir: str | None = None
    replay_inputs: Any = None
    output_groups: tuple[str, ...] = ()
    input_groups: tuple[str, ...] = ()
    replica: bool = False
    control: str = ""
    peer_timeout_s: float = 10.0
    plan_digest: str = ""
    chain_key: str | None = None


def input_counters(inlet: Inlet | None, stage: Any) -> list[dict[str, int]]:
    """The receiver counters of the stage's input links, and those of the input it receives
    itself (:meth:`stages.base.Stage.input_counters`)."""
    links = [c.as_dict() for c in inlet.counters] if inlet else []
    return [*links, stage.input_counters()]


class _Heartbeat:
    """Sends a ``stats`` heartbeat at most every ``interval_s``; its p50/p99 are those of the
    messages processed since the previous one (NaN when there were none)."""

    def __init__(self, spec: WorkerSpec, control: ControlClient, stats: StageStats,
                 inlet: Inlet | None, stage: Any):
        self.spec, self.control, self.stats, self.inlet = spec, control, stats, inlet
        self.stage = stage
        self.count = 0
        self.mark = 0  # durations recorded before the previous heartbeat
        self.next_t = time.monotonic() + spec.heartbeat_s

    def maybe_send(self) -> None:
        if time.monotonic() < self.next_t:
            return
        self.next_t = time.monotonic() + self.spec.heartbeat_s
        links = input_counters(self.inlet, self.stage)
        # the processing times since the previous heartbeat: what the stage does now
        p50, p99 = percentiles_ms(self.stats.durations.since(self.mark))
        self.mark = self.stats.durations.count
        self.control.report("stats", {
            "beat": self.count, "msgs_in": self.stats.msgs_in, "msgs_out": self.stats.msgs_out,
            **{k: sum(c.get(k, 0) for c in links)
               for k in ("dropped", "decode_errors", "seq_gaps")},
            "p50_ms": p50, "p99_ms": p99,
        })
        self.count += 1


def _send_all(outlet: Outlet, msgs: list[Message], should_stop: Callable[[], bool]) -> bool:
    return all(outlet.send(m, should_stop) for m in msgs)


def _run_source(spec: WorkerSpec, stage: Any, outlet: Outlet, control: ControlClient,
                stats: StageStats, beat: _Heartbeat) -> None:
    source = iter(stage)
    for delay in stage_calls.pace(spec.rate_hz):
        if spec.frames is not None and stats.msgs_out >= spec.frames:
            return
        if control.stop.is_set() or control.aborted():
            return
        if delay > 0 and control.stop.wait(delay):
            return
        msg = stage_calls.next_from_source(source, spec.name, stats)
        if msg is None or not outlet.send(msg, control.aborted):
            return
        beat.maybe_send()


def _run_stage(spec: WorkerSpec, stage: Any, inlet: Inlet, outlet: Outlet,
               control: ControlClient, stats: StageStats, beat: _Heartbeat,
               trace: SeqTrace | None) -> None:
    idle_polls = [0] * len(spec.inputs)
    while not inlet.ended:
        if control.aborted():
            return
        got = inlet.recv(POLL_MS)
        beat.maybe_send()
        if got is None:
            if not _send_all(outlet, list(stage.idle()), control.aborted):
                return
            # An EndOfStream lost on a drop_oldest link: the producer has ended and nothing
            # arrived for two polls, so its stream is over.
            for i, producer in enumerate(spec.producers):
                ended = control.ended[producer].is_set()
                idle_polls[i] = idle_polls[i] + 1 if ended else 0
                if idle_polls[i] >= 2:
                    inlet.end_link(i)
            continue
        idle_polls[got[0]] = 0
        topic, msg = spec.inputs[got[0]].topic, got[1]
        if spec.replay_inputs is not None and (topic, msg.seq) not in spec.replay_inputs:
            stats.skipped += 1
            continue
        if trace is not None:
            trace.add(topic, msg.seq)
        outs = stage_calls.process(stage, spec.name, msg, stats, topic)
        if not _send_all(outlet, outs, control.aborted):
            return


#: Exit code of a worker that stopped because the run was aborted (by a failing peer, or by
#: the parent): it is not the cause, and the runner does not blame it.
EXIT_ABORTED = 3


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    """A SIGTERM sent to the worker itself (not via the parent): leave through ``finally``, so
    the stage's ``stop()`` still runs (a recorder finishes its file)."""
    raise SystemExit(128 + signum)


def spawn(specs: Mapping[str, WorkerSpec]) -> dict[str, Any]:
    """Start one process (``spawn`` start method) running :func:`main` per spec; returns the
    processes, keyed by instance name."""
    mp = multiprocessing.get_context("spawn")
    procs = {}
    for name, spec in specs.items():
        procs[name] = mp.Process(target=main, args=(spec,), name=f"csist-{name}")
        procs[name].start()
    return procs


def main(spec: WorkerSpec, standalone: bool = False) -> None:
    """Entry point of a worker process (see the module docstring); exits 0 when its stream is
    done, 1 on failure, :data:`EXIT_ABORTED` when the run was aborted elsewhere, 143 on a
    SIGTERM of its own (after ``stop()``).

    It leaves with ``os._exit`` once the stage is stopped and its sockets are closed: the
    interpreter's own teardown (a garbage collection over every object torch, numba and the
    stage left behind) made ten workers that stopped together on two cores take over 3 s
    to exit, so an aborted run outlived its grace period and got terminated.
    """
    # Ctrl-C reaches every process of the terminal: a spawned worker leaves it to its runner,
    # a stage started on its own (`python -m pipeline stage`) stops as on SIGTERM
    signal.signal(signal.SIGINT, _exit_on_sigterm if standalone else signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(levelname)s [{spec.name}] %(name)s: %(message)s")
    ctx = zmq.Context()
    curve = ChainCurve(ctx, spec.chain_key) if spec.chain_key else None
    control = ControlClient(ctx, spec.control, spec.name, spec.peer_timeout_s,
                            spec.ready_timeout_s, curve)
    try:
        control.report("hello", {"plan": spec.plan_digest, "pid": os.getpid(),
                                 "host": socket.gethostname()})
        _serve(spec, control, ctx, curve)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # whatever it was, the process ends here
        traceback.print_exc()
        code = 1
    control.report("exit", code)
    control.close()
    if curve is not None:
        curve.stop()
    ctx.term()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _serve(spec: WorkerSpec, control: ControlClient, ctx: zmq.Context,
           curve: ChainCurve | None) -> None:
    """The body of :func:`main`; leaves by ``sys.exit`` with its exit code, or returns (0)."""
    stage, inlet, outlet, stats = None, None, None, None
    done = False
    try:
        stage = spec.cls(spec.config)
        stage.start()
        outlet = Outlet(ctx, spec.outputs, spec.output_groups or None,
                        lambda i: control.dead[spec.consumers[i]].is_set(), curve)
        inlet = (Inlet(ctx, spec.inputs, spec.limits, spec.input_groups or None,
                       [spec.replica] * len(spec.inputs), raw=spec.cls.RAW_INPUT, curve=curve)
                 if spec.inputs else None)
        if not outlet.wait_ready(spec.ready_timeout_s, control.aborted):
            if control.aborted():  # a peer failed while we waited for it: it reports the cause
                sys.exit(EXIT_ABORTED)
            raise RuntimeError(f"stage {spec.name!r}: output consumers did not connect within "
                               f"{spec.ready_timeout_s} s")
        control.report("ready")
        while not control.go.wait(POLL_MS / 1000):
            if control.aborted():
                sys.exit(EXIT_ABORTED)
        stats = StageStats(spec.name)
        beat = _Heartbeat(spec, control, stats, inlet, stage)
        if inlet is None:
            _run_source(spec, stage, outlet, control, stats, beat)
        else:
            trace = SeqTrace() if spec.trace_dir else None
            _run_stage(spec, stage, inlet, outlet, control, stats, beat, trace)
            control.drained[spec.name].set()
            if trace is not None and not control.aborted():
                write_trace(spec.trace_dir, spec.name, trace)
        if control.aborted():
            sys.exit(EXIT_ABORTED)
        _send_all(outlet, stage_calls.flush(stage, spec.name, stats), control.aborted)
        outlet.send_end(should_stop=control.aborted)
        control.ended[spec.name].set()
        while not all(control.drained[c].wait(POLL_MS / 1000) for c in spec.consumers):
            if control.aborted():
                sys.exit(EXIT_ABORTED)
        links = input_counters(inlet, stage)
        for link, dropped in zip(spec.outputs, outlet.send_dropped, strict=True):
            if dropped:
                logger.warning("%d message(s) dropped sending on %s", dropped, link.endpoint)
        control.report("done", {"stats": stats.summary(links), "summary": stage.summary()})
        done = True
    except Exception as exc:
        if control.abort.is_set():  # failing after the run was aborted: not the cause
            logger.debug("failed after the abort: %s: %s", type(exc).__name__, exc)
            sys.exit(EXIT_ABORTED)
        control.abort.set()
        report = {"error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc() if stage_calls.traceback_wanted(exc)
                  else None}
        control.report("error", report)
        sys.exit(1)
    finally:
        if stats is not None and not done:  # aborted, failed or terminated: exact figures
            # the exact figures of a stage that stops unfinished, not its last heartbeat's
            control.report("final", stats.summary(input_counters(inlet, stage)))
        if stage is not None:
            stage.stop()
        if inlet is not None:
            inlet.close()
        if outlet is not None:
            outlet.close(linger_ms=0)  # consumers are drained (or the run is aborted)
