"""Run a chain of stages: in one process over an iterator, or one process per stage over ZeroMQ.

Both modes take the same validated :class:`~pipeline.config.StagePlan` list and return the same
report (:func:`pipeline.run.report.build_report`):

``inline``
    Every stage lives in this process. Each source message is delivered breadth-first: a
    message goes to every stage reading its topic (in config order) before any of their outputs
    move on, so a stage reading two topics (e.g. frames and blobs) sees a frame before the blobs
    computed from it. No sockets, no threads: used for tests, replay and evaluation.
``processes``
    One process per stage, or per replica of a replicated stage (:mod:`pipeline.run.replicas`;
    :mod:`pipeline.run.worker`), one ZeroMQ link per (topic, producer process, consumer
    process), ipc sockets in a temp dir or tcp ports (:mod:`pipeline.run.layout`). This
    process is the *conductor*: it drives the instances over the control plane
    (:mod:`pipeline.run.control`) and spawns every one that ``run.external`` does not name;
    those are started with ``python -m pipeline stage`` on any host
    (:mod:`pipeline.run.remote`). Start-up is a readiness handshake (every instance reports
    ``ready`` once its output consumers are connected, then the conductor sets ``go``), so a
    lossless run loses nothing to slow joiners.

Stopping: the run ends when the source is exhausted or ``run.frames`` messages were produced.
A stop request (``should_stop()``, SIGINT/SIGTERM under :func:`run`) stops the source and lets
the chain drain: every stage flushes and EndOfStream markers travel down the links. A second
signal, a failing stage or a dead process aborts every worker at once; the report then carries
an ``error`` and the CLI exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from pipeline.config import ConfigError, RunConfig, StagePlan
from pipeline.run import compose, control, layout, remote, stage_calls, worker
from pipeline.run.replicas import siblings
from pipeline.run.report import StageStats, build_report
from pipeline.wire.curve import ChainCurve
from stages.messages import Message, PipelineError

logger = logging.getLogger(__name__)

#: How long aborted workers get to exit before they are terminated, then killed (s).
ABORT_GRACE_S = 3.0


class StageFailed(PipelineError):
    """A stage raised; ``stage`` names it and ``__cause__`` is the original exception."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def _never() -> bool:
    return False


def latency_stage(plans: Sequence[StagePlan]) -> str | None:
    """Where end-to-end latency is measured: the deepest stage that publishes a topic (the
    tracker in the standard chain), else the deepest stage; None for a lone source.

    Depth counts the stages between the source and a stage along its longest input path.
    """
    depth_of_topic: dict[str, int] = {}
    best: tuple[int, int, str] | None = None
    for plan in plans:
        # (a service sink such as the tap sits early and reads topics produced after it)
        depth = 1 + max((depth_of_topic.get(t, -1) for t in plan.inputs), default=-1)
        if plan.output is not None:
            depth_of_topic[plan.output] = depth
        if plan.inputs:
            key = (plan.output is not None, depth, plan.name)
            best = key if best is None or key[:2] >= best[:2] else best
    return None if best is None else best[2]


# ---------------------------------------------------------------------------------------------
# Inline mode.


def run_inline(
    plans: Sequence[StagePlan], run: RunConfig, should_stop: Callable[[], bool] = _never
) -> dict[str, Any]:
    """Run the chain in this process (see the module docstring); returns the report."""
    stats = [StageStats(p.name) for p in plans]
    consumers = {
        topic: [i for i, p in enumerate(plans) if topic in p.inputs]
        for topic in {p.output for p in plans if p.output is not None}
    }

    def deliver(topic: str | None, msgs: Sequence[Message]) -> None:
        queue = deque((topic, m) for m in msgs)
        while queue:
            topic, msg = queue.popleft()
            for i in consumers.get(topic, ()) if topic is not None else ():
                only = plans[i].replay_inputs
                if only is not None and (topic, msg.seq) not in only:
                    stats[i].skipped += 1
                    continue
                try:
                    outs = stage_calls.process(stages[i], plans[i].name, msg, stats[i], topic)
                except Exception as exc:
                    raise StageFailed(plans[i].name) from exc
                queue.extend((plans[i].output, out) for out in outs)

    error, interrupted, started, summaries = None, False, [], {}
    stages: list[Any] = []
    try:
        for plan in plans:
            try:
                stages.append(plan.build())
                stages[-1].start()
            except Exception as exc:
                raise StageFailed(plan.name) from exc
            started.append(stages[-1])
        source = iter(stages[0])
        for wait in stage_calls.pace(run.rate_hz):
            if run.frames is not None and stats[0].msgs_out >= run.frames:
                break
            if should_stop():
                interrupted = True
                break
            time.sleep(wait)
            try:
                msg = stage_calls.next_from_source(source, plans[0].name, stats[0])
            except Exception as exc:
                raise StageFailed(plans[0].name) from exc
            if msg is None:
                break
            deliver(plans[0].output, [msg])
        for i in range(1, len(plans)):
            try:
                outs = stage_calls.flush(stages[i], plans[i].name, stats[i])
            except Exception as exc:
                raise StageFailed(plans[i].name) from exc
            deliver(plans[i].output, outs)
        summaries = {p.name: s.summary() for p, s in zip(plans, stages, strict=True)}
    except StageFailed as exc:
        cause = exc.__cause__
        logger.error("stage %r failed", exc.stage,
                     exc_info=cause if stage_calls.traceback_wanted(cause) else None)
        error = f"stage {exc.stage!r} failed: {type(cause).__name__}: {cause}"
    finally:
        for stage in started:
            try:
                stage.stop()
            except Exception:
                logger.exception("stop() of %s failed", type(stage).__name__)
    # the stages that were built (all of them unless one failed to build)
    own = {p.name: s.input_counters() for p, s in zip(plans, stages, strict=False)}
    return build_report(
        mode="inline", source=plans[0].name,
        stages={st.name: st.summary([own.get(st.name, {})]) for st in stats},
        latency_at=latency_stage(plans),
        summaries={k: v for k, v in summaries.items() if v is not None},
        error=error, interrupted=interrupted,
    )


# ---------------------------------------------------------------------------------------------
# Process mode.


class _Watch:
    """The conductor's view of the stage instances: what each reported, and whether it still
    runs. A local instance (spawned here) ends when its process exits; an external one (started
    with ``python -m pipeline stage``, maybe on another host) when it reports its exit code, or
    when it has been silent for ``run.peer_timeout_s``.

    An external instance (not the source, not a replica the run went on without) may
    *rejoin*: when it is lost, the run waits up to ``run.rejoin_timeout_s`` for the same name to say
    hello again (a restarted process; the other stages keep their state and wait on their
    links), and fails only if none does."""

    def __init__(self, names: Sequence[str], conductor: control.Conductor, procs: dict,
                 run: RunConfig, digest: str, replicas: dict[str, list[str]] | None = None,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.names = list(names)
        self.conductor, self.procs = conductor, procs
        self.peer_timeout_s, self.digest = run.peer_timeout_s, digest
        self.rejoin_timeout_s = run.rejoin_timeout_s
        #: Lost instances the run waits for: instance -> (deadline, how it was lost).
        self.waiting: dict[str, tuple[float, str]] = {}
        #: Instances that rejoined: instance -> how many times.
        self.rejoined: dict[str, int] = {}
        self.replicas = replicas or {}  # instance -> all instances of its stage
        self.on_lost = on_lost or (lambda _name: None)
        #: Replicas that died while a sibling ran on: instance -> how it ended.
        self.lost: dict[str, str] = {}
        self.ready: set[str] = set()
        self.done: dict[str, dict] = {}
        self.final: dict[str, dict] = {}  # the stats of stages that stopped unfinished
        self.beats: dict[str, dict] = {}
        self.tracebacks: dict[str, str] = {}
        self.hosts: dict[str, str] = {}  # instance -> "host pid N", from its hello
        self.exits: dict[str, int] = {}  # exit codes reported by the instances
        self.ended: set[str] = set()  # instances whose end is accounted for
        self.error: str | None = None

    def _exit_code(self, name: str) -> int | str | None:
        """An instance's exit code, "silent" for an external one that stopped answering, or
        None while it runs."""
        proc = self.procs.get(name)
        if proc is not None:
            return proc.exitcode
        if name in self.exits:
            return self.exits[name]
        heard = self.conductor.heard.get(name)  # (silence counts once it is ready: building
        if name in self.ready and time.monotonic() - heard > self.peer_timeout_s:  # a model
            return "silent"  # may take longer)
        return None

    def alive(self) -> list[str]:
        return [n for n in self.names if n not in self.ended and self._exit_code(n) is None]

    def fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
            logger.error("%s", error)

    def poll(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for reports, account them and the instances that ended."""
        sentinels = [p.sentinel for n, p in self.procs.items() if n not in self.ended]
        for report in self.conductor.poll(timeout_s, sentinels):
            self.read(*report)
        for name in self.names:
            if name not in self.ended and self._exit_code(name) is not None:
                self._exited(name)
        for name, (deadline, how) in list(self.waiting.items()):
            if time.monotonic() > deadline:
                del self.waiting[name]
                self.fail(f"stage {name!r} {how} and did not rejoin within "
                          f"run.rejoin_timeout_s = {self.rejoin_timeout_s} s")

    def read(self, name: str, kind: str, payload: Any) -> None:
        if kind == "hello":
            self._hello(name, payload)
        elif kind == "ready":
            self.ready.add(name)
        elif kind == "stats":
            self.beats[name] = payload
            logger.debug("%s: %s", name, payload)
        elif kind == "done":
            self.done[name] = payload
        elif kind == "final":
            self.final[name] = payload
        elif kind == "exit":
            self.exits[name] = payload
        elif kind == "error":
            if payload.get("traceback"):
                self.tracebacks[name] = payload["traceback"]
            self.fail(f"stage {name!r} failed: {payload.get('error')}")

    def _hello(self, name: str, payload: dict) -> None:
        where = f"{payload.get('host')} pid {payload.get('pid')}"
        if name in self.hosts and self.hosts[name] != where:  # a new process: it starts over
            if not self._may_rejoin(name):
                self.fail(f"stage {name!r} was started again ({where}, was {self.hosts[name]}) "
                          f"in a running chain; only an external stage may rejoin (not the "
                          f"source, not a replica the run went on without), with "
                          f"run.rejoin_timeout_s > 0")
                return
            logger.warning("stage %r started again (%s, was %s): it rejoins", name, where,
                           self.hosts[name])
            self.ready.discard(name)
            self.exits.pop(name, None)
            self.ended.discard(name)
            self.waiting.pop(name, None)
            self.rejoined[name] = self.rejoined.get(name, 0) + 1
        self.hosts[name] = where
        if payload.get("plan") != self.digest:
            self.fail(f"stage {name!r} ({where}) was started with another chain layout (plan "
                      f"{payload.get('plan')}, this run's {self.digest}); start every stage "
                      f"with the same config file and --set options")

    def _may_rejoin(self, name: str) -> bool:
        """Whether ``name`` may be started again in a running chain (see the class
        docstring)."""
        return (self.rejoin_timeout_s > 0 and name not in self.procs and name != self.names[0]
                and name not in self.lost)

    def _exited(self, name: str) -> None:
        self.ended.add(name)
        siblings_run = any(n != name and n in self.alive() for n in self.replicas.get(name, ()))
        proc = self.procs.get(name)
        code = self._exit_code(name)
        if proc is not None and code >= 0:  # it exited by itself: its last reports are on
            deadline = time.monotonic() + 1.0  # their way (its exit code comes last)
            while name not in self.exits and time.monotonic() < deadline:
                for report in self.conductor.poll(0.05):
                    self.read(*report)
        if name in self.done or self.error is not None or code == worker.EXIT_ABORTED:
            return
        where = (f"pid {proc.pid}" if proc is not None else self.hosts.get(name, "never seen"))
        how = ("exited before finishing its stream" if code == 0
               else f"stopped answering for {self.peer_timeout_s:.0f} s" if code == "silent"
               else f"was killed by signal {-code}" if code < 0
               else f"exited with code {code}")
        if siblings_run:
            self.lost[name] = how
            logger.warning("replica %r (%s) %s; its queued messages are lost, the other "
                           "replicas go on", name, where, how)
            self.on_lost(name)
            return
        if self._may_rejoin(name):
            self.waiting[name] = (time.monotonic() + self.rejoin_timeout_s, f"({where}) {how}")
            logger.warning("stage %r (%s) %s; waiting up to %g s for it to rejoin (start it "
                           "again); the other stages keep their state", name, where, how,
                           self.rejoin_timeout_s)
            return
        self.fail(f"stage {name!r} ({where}) {how}")

    def stage_summary(self, name: str) -> dict[str, Any]:
        """The final statistics of a stage (also of one that stopped unfinished), or, for a
        stage that was killed, what its last heartbeat said."""
        if name in self.done:
            return self.done[name]["stats"]
        if name in self.final:
            return self.final[name]
        summary = StageStats(name).summary()
        beat = self.beats.get(name)
        if beat is not None:
            summary.update({k: beat[k] for k in ("msgs_in", "msgs_out", "dropped",
                                                 "decode_errors", "seq_gaps", "p50_ms",
                                                 "p99_ms")})
        return summary


def _supervise(watch: _Watch, run: RunConfig, should_stop: Callable[[], bool],
               source: str) -> bool:
    """Drive the instances from start-up to exit; returns True if a stop request cut the run."""
    conductor = watch.conductor
    interrupted = False
    deadline = time.monotonic() + run.ready_timeout_s + 30.0  # + spawn and import time
    while len(watch.ready | watch.lost.keys()) < len(watch.names) and watch.error is None:
        watch.poll(0.1)
        if should_stop():
            return True
        if time.monotonic() > deadline:
            waiting = sorted(set(watch.names) - watch.ready - watch.lost.keys())
            watch.fail(f"stages {waiting} were not ready within {run.ready_timeout_s + 30.0:.0f} "
                       f"s")
    if watch.error is not None:
        unseen = [n for n in watch.names if n not in conductor.heard]
        if unseen:
            logger.error("%s never contacted the conductor: are they started, with the same "
                         "run.control and run.chain_key?", unseen)
        return False
    conductor.set("go")
    logger.info("running %d stages in processes mode", len(watch.names))
    drain_deadline = math.inf
    while (watch.alive() or watch.waiting) and watch.error is None:
        watch.poll(0.1)
        stopping = "stop" in conductor.state.flags
        if should_stop() and not stopping:
            interrupted = True
            conductor.set("stop")
        if ((stopping or conductor.state.is_set("ended", source))
                and drain_deadline == math.inf):
            drain_deadline = time.monotonic() + run.drain_timeout_s
        if time.monotonic() > drain_deadline:
            watch.fail(f"the chain did not drain within run.drain_timeout_s = "
                       f"{run.drain_timeout_s} s (still running: {watch.alive()})")
    return interrupted


#: Temporary folders of a run are named ``csist-<runner pid>-...``.
TEMP_PREFIX = "csist-"


def sweep_stale_temp_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the temporary folders that runs killed with SIGKILL left behind: those under
    ``root`` (default: the system temp folder) whose runner pid no longer exists. Returns the
    folders removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        match = re.match(rf"{TEMP_PREFIX}(\d+)-", path.name)
        if not (match and path.is_dir()):
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:  # its runner is gone
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except (PermissionError, OverflowError):  # alive (another user's), or not a pid
            continue
    if removed:
        logger.info("removed %d temporary folder(s) left by killed runs", len(removed))
    return removed


def _reap(watch: _Watch) -> None:
    """Wait for every instance to exit; terminate, then kill, the local ones that do not (an
    external one that does not confirm is only logged: it aborts on its own once the conductor
    is silent)."""
    deadline = time.monotonic() + ABORT_GRACE_S
    while watch.alive() and time.monotonic() < deadline:
        watch.poll(0.1)
    for name in watch.alive():
        proc = watch.procs.get(name)
        if proc is None:
            logger.warning("external stage %r (%s) did not confirm its exit", name,
                           watch.hosts.get(name, "never seen"))
            continue
        logger.warning("terminating stage %r (pid %d)", name, proc.pid)
        proc.terminate()
        proc.join(1.0)
        if proc.exitcode is None:
            proc.kill()
            proc.join(1.0)
    watch.poll(0.05)  # the final statistics of the stages stopped now


def run_processes(
    plans: Sequence[StagePlan], run: RunConfig, should_stop: Callable[[], bool] = _never,
    trace_dir: str | None = None, on_spawn: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """Run one process per stage instance (see the module docstring); returns the report.

    The instances named by ``run.external`` are not started here: the conductor waits for
    them to connect (``python -m pipeline stage``, on any host). ``trace_dir``: every producing
    stage writes its input trace there (:mod:`pipeline.attach.trace`) for the recorder.
    ``on_spawn``: called once with ``{stage name: pid}`` when every local stage process has
    started (for monitors such as :mod:`pipeline.soak`).
    """
    names = layout.instance_names(plans)
    external = layout.resolve_names(plans, run.external, "run.external")
    with contextlib.ExitStack() as stack:
        ipc_dir = None
        if run.transport == "ipc" or run.control is None:
            if run.ipc_dir:
                ipc_dir = Path(run.ipc_dir)
                ipc_dir.mkdir(parents=True, exist_ok=True)
            else:
                ipc_dir = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-")))
        specs = layout.worker_specs(plans, run, ipc_dir, trace_dir)
        endpoint = next(iter(specs.values())).control
        ctx = zmq.Context()
        stack.callback(ctx.term)
        curve = ChainCurve(ctx, run.chain_key) if run.chain_key else None
        if curve is not None:
            stack.callback(curve.stop)
        conductor = control.Conductor(ctx, endpoint, names, curve)
        stack.callback(conductor.close)
        if external:
            logger.warning("waiting for %s at %s: start each with `python -m pipeline stage "
                           "NAME --config CONFIG` (same config and --set options)",
                           ", ".join(external), endpoint)
        procs = worker.spawn({n: s for n, s in specs.items() if n not in external})
        logger.info("stage processes: %s", ", ".join(f"{n} pid {p.pid}" for n, p in procs.items()))
        if on_spawn is not None:
            on_spawn({name: proc.pid for name, proc in procs.items()})

        def on_lost(name: str) -> None:  # its producers and consumers stop waiting for it
            for flag in ("dead", "ended", "drained"):
                conductor.set(flag, name)

        watch = _Watch(names, conductor, procs, run, specs[names[0]].plan_digest,
                       siblings(plans), on_lost)
        try:
            interrupted = _supervise(watch, run, should_stop, plans[0].name)
        finally:
            if watch.alive():  # an error, an early stop or a second signal: stop everyone now
                conductor.set("abort")
            _reap(watch)
    for name, text in watch.tracebacks.items():
        logger.error("traceback of stage %r:\n%s", name, text)
    at = latency_stage(plans)
    report = build_report(
        mode="processes", source=plans[0].name,
        stages={n: watch.stage_summary(n) for n in watch.names},
        latency_at=at if at in watch.names else None,  # (a replicated last stage: none)
        summaries={n: d["summary"] for n, d in watch.done.items() if d["summary"] is not None},
        error=watch.error, interrupted=interrupted,
    )
    report["replicas_lost"] = watch.lost
    report["rejoined"] = watch.rejoined
    if external:
        report["hosts"] = watch.hosts
    return report


# ---------------------------------------------------------------------------------------------
# Entry point with signal handling.


def run(
    plans: Sequence[StagePlan], run_config: RunConfig, config_yaml: str = "",
    on_spawn: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """Run in ``run_config.mode`` with the service sinks of :mod:`pipeline.run.compose` (tap,
    recorder, outputs digest); SIGINT/SIGTERM stop the source and drain, a second aborts.

    Signal handlers are installed only when called from the main thread, and restored after.

    Parameters
    ----------
    plans : sequence of StagePlan
    run_config : RunConfig
    config_yaml : str
        Effective config, stored in a recording's metadata.
    on_spawn : callable, optional
        Processes mode: called once with ``{stage name: pid}`` when every stage process has
        started.

    Returns
    -------
    dict
        The report of :func:`pipeline.run.report.build_report` plus ``outputs_digest`` and
        ``outputs`` (:func:`pipeline.run.compose.finish_report`).
    """
    if run_config.external:
        remote.check_external(run_config)
    replicated = [p.name for p in plans if p.replicas > 1]
    if replicated and run_config.mode == "processes" and run_config.record is not None:
        raise ConfigError(f"run.record: recording a run with replicated stages ({replicated}) "
                          f"is not supported; drop 'replicas' or the recording")
    if replicated and run_config.mode == "inline":
        logger.info("inline mode builds one instance of %s (replicas apply to processes mode)",
                    replicated)
    # Only a multi-process run can drop messages, so only its recording needs input traces.
    traced = run_config.mode == "processes" and run_config.record is not None
    sweep_stale_temp_dirs()
    trace_dir = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-trace-") if traced else None
    plans = compose.add_services(plans, run_config, config_yaml, trace_dir)
    requests = []

    def on_signal(signum: int, _frame: Any) -> None:
        requests.append(signum)
        if len(requests) > 1:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: aborting")
        logger.warning("%s received: stopping the source and draining the chain "
                       "(send it again to abort)", signal.Signals(signum).name)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        if run_config.mode == "processes":
            report = run_processes(plans, run_config, lambda: bool(requests), trace_dir,
                                   on_spawn)
        else:
            report = run_inline(plans, run_config, lambda: bool(requests))
        return compose.finish_report(report)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if trace_dir is not None:
            shutil.rmtree(trace_dir, ignore_errors=True)
