"""``python -m pipeline stage NAMES --config CONFIG``: stage instances started on their own.

The conductor (``python -m pipeline run`` with ``run.external`` naming these instances) binds
``run.control``; this command computes the chain's layout from the same config
(:mod:`pipeline.run.layout`), so it finds its links and its conductor without being told,
and runs each named instance as a worker (:mod:`pipeline.run.worker`): one name runs in this
process, several run one process each, started and awaited here. A stage started before its
peers waits for them (ZeroMQ connects whenever the peer binds; the conductor starts the
stream once every instance is ready); one whose conductor stays silent for
``run.peer_timeout_s`` aborts.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, RunConfig, StagePlan
from pipeline.run import compose, layout, worker
from pipeline.wire.curve import check_chain_key

logger = logging.getLogger(__name__)


def check_external(run: RunConfig) -> None:
    """Raise :class:`ConfigError` unless stages started elsewhere can find this run: a
    ``run.control`` endpoint, an ``ipc_dir`` for ipc links, processes mode and no recording
    (a recording needs every stage's input trace on this host)."""
    if run.control is None:
        raise ConfigError("run.control: stages started with `python -m pipeline stage` need "
                          "the conductor's endpoint, e.g. run.control: tcp://HOST:5590 (HOST: "
                          "the host running `python -m pipeline run`)")
    if run.transport == "ipc" and run.ipc_dir is None:
        raise ConfigError("run.ipc_dir: with ipc links every stage must know the socket "
                          "folder; set run.ipc_dir (one host), or run.transport: tcp")
    if run.mode != "processes":
        raise ConfigError("run.mode: stages on their own need run.mode: processes")
    if run.record is not None:
        raise ConfigError("run.record: a run with stages started elsewhere cannot be recorded "
                          "yet; record with `python -m pipeline subscribe` on the tap instead")


def stage_specs(plans: Sequence[StagePlan], run: RunConfig,
                names: Sequence[str]) -> dict[str, worker.WorkerSpec]:
    """The worker specs of the named instances (stage names stand for all their instances).

    Raises
    ------
    ConfigError
        See :func:`check_external`; or a name the chain does not have.
    """
    check_external(run)
    if run.chain_key is not None:
        check_chain_key(run.chain_key)
    plans = compose.add_services(plans, run)
    chosen = layout.resolve_names(plans, names, "pipeline stage")
    specs = layout.worker_specs(plans, run, Path(run.ipc_dir) if run.ipc_dir else None)
    return {name: specs[name] for name in chosen}


def serve(specs: dict[str, worker.WorkerSpec]) -> int:
    """Run the instances; returns the exit code (0 when every one finished its stream, else
    the first non-zero code). One instance runs in this process and never returns."""
    if len(specs) == 1:
        worker.main(next(iter(specs.values())), standalone=True)
    procs = worker.spawn(specs)
    logger.info("stage processes: %s", ", ".join(f"{n} pid {p.pid}" for n, p in procs.items()))

    def stop(signum: int, _frame: Any) -> None:  # Ctrl-C or SIGTERM: every instance stops
        logger.warning("%s: stopping %s", signal.Signals(signum).name, ", ".join(procs))
        for proc in procs.values():
            if proc.exitcode is None:
                proc.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for proc in procs.values():
            proc.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = {name: proc.exitcode for name, proc in procs.items()}
    failed = {name: code for name, code in codes.items() if code}
    if failed:
        logger.error("instances that did not finish their stream: %s", failed)
    first = next(iter(failed.values()), 0)
    return 128 - first if first < 0 else first  # killed by signal N: 128 + N, as a shell says
