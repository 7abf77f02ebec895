"""Run a chain of stages: in one process over an iterator, or one process per stage over ZeroMQ.

Both modes take the same validated :class:`~pipeline.config.StagePlan` list and return the same
report (:func:`pipeline.run.report.build_report`):

``inline``
    Every stage lives in this process. Each source message is delivered breadth-first: a
    message goes to every stage reading its topic (in config order) before any of their outputs
    move on, so a stage reading two topics (e.g. frames and blobs) sees a frame before the blobs
    computed from it. No sockets, no threads: used for tests, replay and evaluation.
``processes``
    One spawned process per stage, or per replica of a replicated stage
    (:mod:`pipeline.run.replicas`; :mod:`pipeline.run.worker`), one ZeroMQ link per (topic,
    producer process, consumer process), ipc sockets in a temp dir or tcp ports. Start-up is
    a readiness handshake (every worker reports ``ready`` once its output consumers are
    connected, then the parent sets ``go``), so a lossless run loses nothing to slow joiners.

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
import multiprocessing
import multiprocessing.connection
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

from pipeline.config import ConfigError, RunConfig, StagePlan
from pipeline.run import compose, stage_calls, worker
from pipeline.run.flag import Flag
from pipeline.run.replicas import instances, siblings
from pipeline.run.report import StageStats, build_report
from pipeline.wire.bus import Link
from pipeline.wire.codec import Limits
from stages.messages import Message, PipelineError, Stats

logger = logging.getLogger(__name__)

#: How long aborted workers get to exit before they are terminated, then killed (s).
ABORT_GRACE_S = 3.0
#: Longest ipc socket path (the OS limit is 107 bytes).
MAX_IPC_PATH = 100


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


def plan_links(plans: Sequence[StagePlan], run: RunConfig, ipc_dir: Path | None) -> dict:
    """One :class:`Link` per (topic, producer process, consumer process), keyed so; a stage
    without replicas is one process of its own name (:func:`~pipeline.run.replicas.instances`).

    Raises
    ------
    ConfigError
        If an ipc socket path would be too long for the OS.
    """
    producer_of = {p.output: p for p in plans if p.output is not None}
    links = {}
    port = run.tcp_base_port
    for plan in plans:
        for topic in plan.inputs:
            for producer in instances(producer_of[topic]):
                for consumer in instances(plan):
                    if run.transport == "tcp":
                        endpoint = f"tcp://{run.tcp_host}:{port}"
                        port += 1
                    else:
                        path = f"{ipc_dir}/{topic}--{producer}--{consumer}"
                        if len(path) > MAX_IPC_PATH:
                            raise ConfigError(f"ipc socket path {path!r} is longer than "
                                              f"{MAX_IPC_PATH} bytes; set a shorter run.ipc_dir")
                        endpoint = f"ipc://{path}"
                    links[(topic, producer, consumer)] = Link(
                        topic, endpoint, plan.queue.policy, plan.queue.hwm, plan.queue.depth)
    return links


class _Watch:
    """The parent's view of the workers: what each reported and whether it is still alive."""

    def __init__(self, names: Sequence[str], procs: dict, conns: dict,
                 replicas: dict[str, list[str]] | None = None,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.names = list(names)
        self.procs, self.conns = procs, conns
        self.replicas = replicas or {}  # instance -> all instances of its stage
        self.on_lost = on_lost or (lambda _name: None)
        #: Replicas that died while a sibling ran on: instance -> how it ended.
        self.lost: dict[str, str] = {}
        self.ready: set[str] = set()
        self.done: dict[str, dict] = {}
        self.final: dict[str, dict] = {}  # the stats of stages that stopped unfinished
        self.beats: dict[str, Stats] = {}
        self.tracebacks: dict[str, str] = {}
        self.error: str | None = None

    def alive(self) -> list[str]:
        return [n for n in self.names if self.procs[n].exitcode is None]

    def fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
            logger.error("%s", error)

    def poll(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for reports or exits and account them."""
        by_obj = {c: n for n, c in self.conns.items()}
        by_obj.update({self.procs[n].sentinel: n for n in self.alive()})
        for obj in multiprocessing.connection.wait(list(by_obj), timeout_s):
            name = by_obj[obj]
            if obj in self.conns.values():
                self.read(name)
            else:
                self.procs[name].join(1.0)  # the sentinel can fire just before the exit
                while name in self.conns and self.conns[name].poll():
                    self.read(name)
                self._exited(name)

    def read(self, name: str) -> None:
        try:
            kind, payload = self.conns[name].recv()
        except (EOFError, OSError):
            self.conns.pop(name).close()
            return
        if kind == "ready":
            self.ready.add(name)
        elif kind == "stats":
            self.beats[name] = payload
            logger.debug("%s: %s", name, payload)
        elif kind == "done":
            self.done[name] = payload
        elif kind == "final":
            self.final[name] = payload
        elif kind == "error":
            if payload["traceback"]:
                self.tracebacks[name] = payload["traceback"]
            self.fail(f"stage {name!r} failed: {payload['error']}")

    def _exited(self, name: str) -> None:
        proc = self.procs[name]
        conn = self.conns.get(name)
        if conn is not None and conn.poll(0):  # its last report (an error's cause) comes first
            self.read(name)
        if name in self.done or self.error is not None or proc.exitcode == worker.EXIT_ABORTED:
            return
        code = proc.exitcode
        how = ("exited before finishing its stream" if code == 0
               else f"was killed by signal {-code}" if code is not None and code < 0
               else f"exited with code {code}")
        if any(n != name and n in self.alive() for n in self.replicas.get(name, ())):
            self.lost[name] = how
            logger.warning("replica %r (pid %d) %s; its queued messages are lost, the other "
                           "replicas go on", name, proc.pid, how)
            self.on_lost(name)
            return
        self.fail(f"stage {name!r} (pid {proc.pid}) {how}")

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
            summary.update(msgs_in=beat.msgs_in, msgs_out=beat.msgs_out, dropped=beat.dropped,
                           decode_errors=beat.decode_errors, seq_gaps=beat.seq_gaps,
                           p50_ms=beat.p50_ms, p99_ms=beat.p99_ms)
        return summary


def _spawn(plans: Sequence[StagePlan], run: RunConfig, ipc_dir: Path | None, mp: Any,
           control: worker.Control, trace_dir: str | None) -> tuple[dict, dict]:
    """Start one worker process per stage instance; returns their processes and pipes, keyed
    by instance name."""
    links = plan_links(plans, run, ipc_dir)
    limits = Limits(max_total_bytes=run.max_message_bytes)
    stage_of = {name: plan.name for plan in plans for name in instances(plan)}
    procs, conns = {}, {}
    for i, plan in enumerate(plans):
        for name in instances(plan):
            inputs = [(key, link) for key, link in links.items() if key[2] == name]
            outputs = [(key, link) for key, link in links.items() if key[1] == name]
            spec = worker.WorkerSpec(
                name=name, cls=plan.cls, config=plan.config,
                inputs=tuple(link for _, link in inputs),
                producers=tuple(key[1] for key, _ in inputs),
                outputs=tuple(link for _, link in outputs),
                consumers=tuple(key[2] for key, _ in outputs),
                frames=run.frames if i == 0 else None, rate_hz=run.rate_hz if i == 0 else None,
                limits=limits, ready_timeout_s=run.ready_timeout_s,
                heartbeat_s=run.heartbeat_s,
                log_level=logging.getLogger().getEffectiveLevel(),
                trace_dir=trace_dir if plan.inputs and plan.output is not None else None,
                replay_inputs=plan.replay_inputs,
                output_groups=tuple(stage_of[key[2]] for key, _ in outputs),
                input_groups=tuple(key[0] for key, _ in inputs),
                replica=plan.replicas > 1,
            )
            reader, writer = mp.Pipe(duplex=False)
            proc = mp.Process(target=worker.main, args=(spec, writer, control),
                              name=f"csist-{name}")
            proc.start()
            writer.close()
            procs[name], conns[name] = proc, reader
    return procs, conns


def _supervise(watch: _Watch, run: RunConfig, control: worker.Control,
               should_stop: Callable[[], bool], source: str) -> bool:
    """Drive the workers from start-up to exit; returns True if a stop request cut the run."""
    interrupted = False
    deadline = time.monotonic() + run.ready_timeout_s + 30.0  # + spawn and import time
    while len(watch.ready | watch.lost.keys()) < len(watch.names) and watch.error is None:
        watch.poll(0.1)
        if should_stop():
            return True
        if time.monotonic() > deadline:
            watch.fail(f"stages {sorted(set(watch.names) - watch.ready - watch.lost.keys())} were "
                       f"not ready within "
                       f"{run.ready_timeout_s + 30.0:.0f} s")
    if watch.error is not None:
        return False
    control.go.set()
    logger.info("running %d stages in processes mode", len(watch.names))
    drain_deadline = math.inf
    while watch.alive() and watch.error is None:
        watch.poll(0.1)
        if should_stop() and not control.stop.is_set():
            interrupted = True
            control.stop.set()
        if (control.stop.is_set() or control.ended[source].is_set()) and drain_deadline == math.inf:
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
    """Wait for every worker to exit; terminate, then kill, the ones that do not."""
    deadline = time.monotonic() + ABORT_GRACE_S
    while watch.alive() and time.monotonic() < deadline:
        watch.poll(0.1)
    for name in watch.alive():
        logger.warning("terminating stage %r (pid %d)", name, watch.procs[name].pid)
        watch.procs[name].terminate()
        watch.procs[name].join(1.0)
        if watch.procs[name].exitcode is None:
            watch.procs[name].kill()
            watch.procs[name].join(1.0)
    for name in list(watch.conns):  # the final statistics of the stages stopped now
        while name in watch.conns and watch.conns[name].poll():
            watch.read(name)
    for conn in watch.conns.values():
        conn.close()


def run_processes(
    plans: Sequence[StagePlan], run: RunConfig, should_stop: Callable[[], bool] = _never,
    trace_dir: str | None = None, on_spawn: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """Run one process per stage (see the module docstring); returns the report.

    ``trace_dir``: every producing stage writes its input trace there (:mod:`pipeline.attach.trace`)
    for the recorder. ``on_spawn``: called once with ``{stage name: pid}`` when every stage
    process has started (for monitors such as :mod:`pipeline.soak`).
    """
    mp = multiprocessing.get_context("spawn")
    names = [name for plan in plans for name in instances(plan)]
    control = worker.Control(go=Flag(mp), stop=Flag(mp), abort=Flag(mp),
                             ended={n: Flag(mp) for n in names},
                             drained={n: Flag(mp) for n in names},
                             dead={n: Flag(mp) for n in names})

    def on_lost(name: str) -> None:  # its producers and consumers stop waiting for it
        for flags in (control.dead, control.ended, control.drained):
            flags[name].set()

    with contextlib.ExitStack() as stack:
        ipc_dir = None
        if run.transport == "ipc":
            if run.ipc_dir:
                ipc_dir = Path(run.ipc_dir)
                ipc_dir.mkdir(parents=True, exist_ok=True)
            else:
                ipc_dir = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-")))
        procs, conns = _spawn(plans, run, ipc_dir, mp, control, trace_dir)
        logger.info("stage processes: %s", ", ".join(f"{n} pid {p.pid}" for n, p in procs.items()))
        if on_spawn is not None:
            on_spawn({name: proc.pid for name, proc in procs.items()})
        watch = _Watch(names, procs, conns, siblings(plans), on_lost)
        try:
            interrupted = _supervise(watch, run, control, should_stop, plans[0].name)
        finally:
            if watch.alive():  # an error, an early stop or a second signal: stop everyone now
                control.abort.set()
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
