"""Where every process and link of a chain lives: the same answer on every host.

A multi-process run is a set of stage *instances* (one per stage, or one per replica,
:mod:`pipeline.run.replicas`) joined by one ZeroMQ link per (topic, producer instance,
consumer instance) and driven by a conductor (:mod:`pipeline.run.control`). This module
derives all of it from the validated config alone, so the runner and every
``python -m pipeline stage`` command, on whatever host, compute the same endpoints:

- with ``transport: ipc``, link ``(topic, producer, consumer)`` is the socket
  ``<ipc dir>/<topic>--<producer>--<consumer>`` (one host only);
- with ``transport: tcp``, the links are numbered in plan order from ``run.tcp_base_port``,
  and the producer binds ``tcp://<its host>:<port>``, its host being the stage's ``host``
  entry (one per replica allowed) or ``run.tcp_host``; consumers connect there;
- the conductor binds ``run.control`` (default: ``<ipc dir>/control``).

:func:`plan_digest` fingerprints the layout; the conductor refuses a stage whose fingerprint
differs from its own (a stage started with another config or other ``--set`` options).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import ConfigError, RunConfig, StagePlan
from pipeline.run.replicas import instances
from pipeline.run.worker import WorkerSpec
from pipeline.wire.bus import Link
from pipeline.wire.codec import Limits

#: Longest ipc socket path (the OS limit is 107 bytes).
MAX_IPC_PATH = 100
#: ``run.external: [all]`` names every instance.
ALL = "all"


def _ipc_path(ipc_dir: Path | None, name: str) -> str:
    path = f"{ipc_dir}/{name}"
    if len(path) > MAX_IPC_PATH:
        raise ConfigError(f"ipc socket path {path!r} is longer than {MAX_IPC_PATH} bytes; set a "
                          f"shorter run.ipc_dir")
    return f"ipc://{path}"


def plan_links(plans: Sequence[StagePlan], run: RunConfig, ipc_dir: Path | None) -> dict:
    """One :class:`Link` per (topic, producer instance, consumer instance), keyed so (see the
    module docstring).

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
            producer_plan = producer_of[topic]
            for k, producer in enumerate(instances(producer_plan)):
                host = producer_plan.hosts[k] if producer_plan.hosts else run.tcp_host
                for consumer in instances(plan):
                    if run.transport == "tcp":
                        endpoint = f"tcp://{host}:{port}"
                        port += 1
                    else:
                        endpoint = _ipc_path(ipc_dir, f"{topic}--{producer}--{consumer}")
                    links[(topic, producer, consumer)] = Link(
                        topic, endpoint, plan.queue.policy, plan.queue.hwm, plan.queue.depth)
    return links


def control_endpoint(run: RunConfig, ipc_dir: Path | None) -> str:
    """The conductor's endpoint: ``run.control``, or an ipc socket in ``ipc_dir``."""
    if run.control is not None:
        return run.control
    if ipc_dir is None:
        raise ConfigError("run.control: set the conductor's endpoint (tcp://HOST:PORT of the "
                          "host running `python -m pipeline run`)")
    return _ipc_path(ipc_dir, "control")


def plan_digest(plans: Sequence[StagePlan], links: dict) -> str:
    """Fingerprint of the chain's layout: its instances, kinds and links (16 hex digits)."""
    text = repr(([(p.name, p.kind, p.inputs, p.output, p.replicas) for p in plans],
                 sorted((key, link.endpoint, link.policy, link.hwm, link.depth)
                        for key, link in links.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def instance_names(plans: Sequence[StagePlan]) -> list[str]:
    """Every instance of the chain, in stage order."""
    return [name for plan in plans for name in instances(plan)]


def resolve_names(plans: Sequence[StagePlan], names: Sequence[str], what: str) -> list[str]:
    """Instance names from user input: ``all``, instance names, or stage names (all of that
    stage's instances).

    Raises
    ------
    ConfigError
        A name that is neither, listing the valid ones.
    """
    every = instance_names(plans)
    if ALL in names:
        return every
    out: list[str] = []
    for name in names:
        plan = next((p for p in plans if p.name == name), None)
        found = instances(plan) if plan is not None else ([name] if name in every else None)
        if found is None:
            raise ConfigError(f"{what}: no stage or instance named {name!r}; this chain has "
                              f"{every} (or '{ALL}')")
        out.extend(n for n in found if n not in out)
    return out


def worker_specs(plans: Sequence[StagePlan], run: RunConfig, ipc_dir: Path | None,
                 trace_dir: str | None = None) -> dict[str, WorkerSpec]:
    """The :class:`WorkerSpec` of every instance, keyed by instance name.

    Parameters
    ----------
    plans : sequence of StagePlan
        The chain with its service sinks (:func:`pipeline.run.compose.add_services`).
    run : RunConfig
    ipc_dir : Path or None
        Folder of the ipc sockets (None with tcp links and a ``run.control`` endpoint).
    trace_dir : str, optional
        Where producing stages write their input traces (recorded runs).
    """
    links = plan_links(plans, run, ipc_dir)
    control = control_endpoint(run, ipc_dir)
    digest = plan_digest(plans, links)
    limits = Limits(max_total_bytes=run.max_message_bytes)
    stage_of = {name: plan.name for plan in plans for name in instances(plan)}
    specs = {}
    for i, plan in enumerate(plans):
        for name in instances(plan):
            inputs = [(key, link) for key, link in links.items() if key[2] == name]
            outputs = [(key, link) for key, link in links.items() if key[1] == name]
            specs[name] = WorkerSpec(
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
                control=control, peer_timeout_s=run.peer_timeout_s, plan_digest=digest,
                chain_key=run.chain_key,
            )
    return specs
