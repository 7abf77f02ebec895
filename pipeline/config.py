"""Pipeline config: YAML -> validated models, ``--set`` overrides, and the stage plan.

Shape of a config file::

    run:                     # how to run (all keys optional)
      mode: inline           # inline (one process) | processes (one process per stage)
      frames: 200            # stop after this many source messages (null: until the source ends)
      rate_hz: null          # pace the source (null: as fast as the chain allows)
      transport: ipc         # ipc (sockets in ipc_dir, default a temp dir) | tcp
      control: null          # conductor endpoint for stages on other hosts, tcp://HOST:PORT
      external: []           # instances started elsewhere with `python -m pipeline stage`
      chain_key: null        # CURVE on links and control: keys/chain.key_secret on every host
      queue: {policy: block, hwm: 4, depth: 2}   # default of every link
      report: null           # JSON report path
      record: {path: runs/live.mcap, topics: null}   # MCAP recording (null: none)
      publish: {endpoint: tcp://127.0.0.1:5555}      # tap: every topic on one PUB endpoint
      curve: {secret_key: keys/server.key_secret, allowed: keys/allowed}  # CURVE on the tap
      capacity_check: true   # CLI: time the unmixer and extractor here against the load first
    sensor:                  # optional: the sensor profile (sim/sensor.py); each stage that
      psf_sigma: 0.5         # needs a value takes it unless its own config sets it
      gain: 1.0              # grey = gain * (raw - offset), applied by the cropper
      offset: 0.0
      saturation: null       # raw counts; null: the frame dtype's maximum
      noise_sigma: null      # grey levels; null: estimated per window
    stages:                  # ordered: the source first, every input produced by an earlier stage
      - name: source
        kind: simulator      # a key of STAGE_KINDS (stages.STAGES + the pipeline's own)
        config: {...}        # the stage's own options (its Config dataclass)
      - name: detector
        kind: detector
        queue: {policy: drop_oldest}   # optional: policy of this stage's input links
        inputs: [frames]     # optional: topics to read (default: the class's INPUTS)
        output: blobs        # optional: topic to publish (default: the class's OUTPUT)
      - name: unmixer
        kind: unmixer
        replicas: 2          # optional: processes sharing the stream (per-message stages only)
        host: [10.0.0.2, 10.0.0.3]   # optional, tcp: address each instance binds its outputs on

Every unknown key is an error that names the file, the key and the valid keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from models.config import (
    ConfigError,
    build_config,
    config_dict,
    parse_override,
    read_yaml_mapping,
    set_path,
)
from pipeline.wire.curve import CurveKeys
from sim.sensor import SensorProfile
from stages import STAGES, stage_class

#: Every stage kind a config may name: the stages of :mod:`stages` plus the pipeline's own,
#: which own a socket and therefore live in this package.
STAGE_KINDS: dict[str, str] = {
    **STAGES,
    # the gate for an outside program's messages
    "external_input": "pipeline.attach.external:ExternalInput",
}

ENTRY_KEYS = ("name", "kind", "config", "inputs", "output", "queue", "replicas", "host")


@dataclasses.dataclass(frozen=True)
class QueueConfig:
    """Queue policy of a link: ``block`` (lossless) or ``drop_oldest`` (live).

    Attributes
    ----------
    policy : {"block", "drop_oldest"}
    hwm : int
        ZeroMQ high-water mark (messages).
    depth : int
        Receiver queue length for ``drop_oldest``.
    """

    policy: Literal["block", "drop_oldest"] = "block"
    hwm: Annotated[int, Field(ge=1)] = 4
    depth: Annotated[int, Field(ge=1)] = 2


@dataclasses.dataclass(frozen=True)
class RecordConfig:
    """MCAP recording of a run (:mod:`pipeline.attach.record`).

    Attributes
    ----------
    path : str
        Output ``.mcap`` file.
    topics : tuple of str or None
        Topics to record (None: all).
    compression : {"zstd", "lz4", "none"}
    chunk_bytes : int
    flush_s : float
        Source seconds between chunk flushes.
    """

    path: Annotated[str, Field(min_length=1)]
    topics: tuple[str, ...] | None = None
    compression: Literal["zstd", "lz4", "none"] = "zstd"
    chunk_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    flush_s: Annotated[float, Field(gt=0)] = 1.0


@dataclasses.dataclass(frozen=True)
class PublishConfig:
    """The tap: every topic of the run re-published on one stable XPUB endpoint.

    Attributes
    ----------
    endpoint : str
        e.g. ``tcp://127.0.0.1:5555`` or ``ipc:///tmp/csist.pub``.
    hwm : int
        Messages queued per subscriber before drops.
    wait_subscribers : int
        Subscriptions to wait for before the source starts (0: none).
    heartbeat_s : float or None
        Seconds without a message after which a heartbeat goes out on every topic
        (processes mode; null: none).
    """

    endpoint: Annotated[str, Field(pattern=r"^(tcp|ipc|inproc)://.+")]
    hwm: Annotated[int, Field(ge=1)] = 64
    wait_subscribers: Annotated[int, Field(ge=0)] = 0
    heartbeat_s: Annotated[float | None, Field(gt=0)] = 1.0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How the chain runs (the ``run`` section; see the module docstring).

    Across hosts (:mod:`pipeline.run.layout`): ``control`` is the conductor's ROUTER endpoint
    (default: an ipc socket in the run's temp folder, which reaches this host only);
    ``peer_timeout_s`` the silence after which the conductor takes a stage as lost and a stage
    its conductor; ``rejoin_timeout_s`` how long a lost external stage may take to be started
    again before the run fails (0: it fails at once; see :class:`pipeline.run.runner._Watch`);
    ``external`` the instances the runner does not start itself (``all``, or names such as
    ``unmixer.1``), each started with ``python -m pipeline stage``;
    ``chain_key`` the chain's CURVE key pair file (``python -m pipeline keys DIR`` writes
    ``DIR/chain.key_secret``), which encrypts and authenticates every link and the control
    plane (:class:`pipeline.wire.curve.ChainCurve`).
    """

    mode: Literal["inline", "processes"] = "inline"
    frames: Annotated[int | None, Field(ge=1)] = None
    rate_hz: Annotated[float | None, Field(gt=0)] = None
    transport: Literal["ipc", "tcp"] = "ipc"
    ipc_dir: str | None = None
    tcp_host: str = "127.0.0.1"
    tcp_base_port: Annotated[int, Field(ge=1024, le=65000)] = 5600
    queue: QueueConfig = QueueConfig()
    report: str | None = None
    max_message_bytes: Annotated[int, Field(ge=1024)] = 64 << 20
    ready_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    drain_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    heartbeat_s: Annotated[float, Field(gt=0)] = 1.0
    record: RecordConfig | None = None
    publish: PublishConfig | None = None
    curve: CurveKeys | None = None
    capacity_check: bool = True
    control: Annotated[str | None, Field(pattern=r"^(tcp|ipc)://.+")] = None
    peer_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    rejoin_timeout_s: Annotated[float, Field(ge=0)] = 0.0
    external: tuple[str, ...] = ()
    chain_key: str | None = None


@dataclasses.dataclass(frozen=True)
class StageEntry:
    """One stage of the chain as written in the file (its ``config`` is checked against the
    stage's own Config class by :func:`plan_stages`)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]
    kind: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: tuple[str, ...] | None = None
    output: str | None = None
    queue: QueueConfig | None = None
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    host: str | tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """A whole config file."""

    run: RunConfig = RunConfig()
    sensor: SensorProfile | None = None
    stages: Annotated[tuple[StageEntry, ...], Field(min_length=1)]


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """A validated stage, ready to build.

    Attributes
    ----------
    name : str
    kind : str
    cls : type
        The stage class.
    config : dataclass instance
        The stage's validated frozen config.
    inputs : tuple of str
        Topics it reads (empty for the source).
    output : str or None
        Topic it publishes on.
    queue : QueueConfig
        Policy of its input links.
    replay_inputs : SeqTrace or None
        Lossless replay of a traced recording (:mod:`pipeline.attach.trace`): the only (topic, seq)
        inputs the stage processes; None processes every input.
    replicas : int
        Processes that share the stage's input stream in processes mode
        (:mod:`pipeline.run.replicas`); inline runs build one.
    hosts : tuple of str
        With ``transport: tcp``: the address each instance binds its output links on (one per
        replica); empty: ``run.tcp_host``.
    """

    name: str
    kind: str
    cls: type
    config: Any
    inputs: tuple[str, ...]
    output: str | None
    queue: QueueConfig
    replay_inputs: Any = None
    replicas: int = 1
    hosts: tuple[str, ...] = ()

    def build(self) -> Any:
        """A new stage object."""
        return self.cls(self.config)


# ---------------------------------------------------------------------------------------------
# Loading and overrides.


def apply_override(raw: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set ``value`` at ``path`` in the raw config mapping (in place).

    ``stages.<name>.<key>`` addresses the stage called ``<name>``: ``<key>`` is one of its
    entry keys (kind, inputs, output, queue, config) or else an option inside its ``config``.
    """
    dotted = ".".join(path)
    node: Any = raw
    keys = list(path)
    if keys[0] == "stages":
        if len(keys) < 3:
            raise ConfigError(f"--set {dotted}: use stages.<stage name>.<key>=VALUE")
        entries = raw.get("stages") or []
        named = [e for e in entries if isinstance(e, dict) and e.get("name") == keys[1]]
        if not named:
            names = [e.get("name") for e in entries if isinstance(e, dict)]
            raise ConfigError(f"--set {dotted}: no stage named {keys[1]!r}; stages: {names}")
        node = named[0]
        keys = keys[2:] if keys[2] in ENTRY_KEYS else ["config", *keys[2:]]
    set_path(node, keys, value, f"--set {dotted}: ")


def load_raw(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config file and apply ``--set`` overrides.

    Raises
    ------
    ConfigError
        If the file is missing, not YAML, not a mapping, or an override is malformed.
    """
    raw = read_yaml_mapping(path)
    for text in overrides:
        try:
            apply_override(raw, *parse_override(text))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return raw


def _name_stages(message: str, raw: Mapping[str, Any]) -> str:
    """Add each stage's name to ``stages[i]`` in an error message: ``stages[1] (detector)``."""
    entries = raw.get("stages")
    if not isinstance(entries, list):
        return message

    def name(match: re.Match) -> str:
        i = int(match.group(1))
        entry = entries[i] if i < len(entries) else None
        label = entry.get("name") if isinstance(entry, dict) else None
        return match.group(0) + (f" ({label})" if label else "")

    return re.sub(r"stages\[(\d+)\]", name, message)


# ---------------------------------------------------------------------------------------------
# Validation of the stages against their classes and the wiring.


def sensor_values(profile: SensorProfile | None, cls: type) -> dict[str, Any]:
    """The config values a stage class takes from the sensor profile (its
    ``SENSOR_FIELDS``); none without a profile."""
    if profile is None:
        return {}
    return {option: getattr(profile, field)
            for field, option in getattr(cls, "SENSOR_FIELDS", {}).items()}


def plan_stages(config: PipelineConfig, source: str = "config") -> list[StagePlan]:
    """Resolve every stage's class, validate its options and check the wiring.

    Raises
    ------
    ConfigError
        Unknown kind, invalid option, duplicate name, a topic with two producers, an input no
        earlier stage produces, not exactly one source first, or replicas of a stage that
        keeps state across messages.
    """
    plans: list[StagePlan] = []
    producers: dict[str, str] = {}
    for i, entry in enumerate(config.stages):
        where = f"{source}: stages[{i}] ({entry.name})"
        try:
            cls = stage_class(entry.kind, STAGE_KINDS)
        except ConfigError as exc:
            raise ConfigError(f"{where}.kind: {exc}") from exc
        if any(p.name == entry.name for p in plans):
            raise ConfigError(f"{where}: duplicate stage name {entry.name!r}; names must differ")
        stage_config = build_config(cls.Config, {**sensor_values(config.sensor, cls),
                                                 **entry.config}, f"{where}.config")
        inputs = tuple(cls.INPUTS) if entry.inputs is None else entry.inputs
        output = cls.OUTPUT if entry.output is None else entry.output
        if (i == 0) != (not inputs):
            raise ConfigError(f"{where}: the first stage must be the only source (a stage "
                              f"without inputs); move the source to the top")
        for topic in inputs:
            if topic not in producers:
                raise ConfigError(f"{where}: input topic {topic!r} is not produced by an earlier "
                                  f"stage (produced so far: {sorted(producers)})")
        if output is not None:
            if output in producers:
                raise ConfigError(f"{where}: topic {output!r} is already produced by stage "
                                  f"{producers[output]!r}; set a different 'output'")
            producers[output] = entry.name
        if entry.replicas > 1 and not cls.REPLICABLE:
            replicable = sorted(k for k in STAGE_KINDS
                                if getattr(stage_class(k, STAGE_KINDS), "REPLICABLE", False))
            raise ConfigError(f"{where}.replicas: a {entry.kind} stage keeps state from one "
                              f"message to the next (or is the source), so replicas would each "
                              f"see part of the stream; only these kinds can be replicated: "
                              f"{replicable}")
        plans.append(StagePlan(entry.name, entry.kind, cls, stage_config, inputs, output,
                               entry.queue or config.run.queue, replicas=entry.replicas,
                               hosts=_hosts(entry, config.run, where)))
    return plans


def _hosts(entry: StageEntry, run: RunConfig, where: str) -> tuple[str, ...]:
    """One bind address per instance of the stage, from its ``host`` key (see StagePlan)."""
    if entry.host is None:
        return ()
    if run.transport != "tcp":
        raise ConfigError(f"{where}.host: a stage on a host of its own needs "
                          f"run.transport: tcp (now {run.transport!r})")
    hosts = (entry.host,) if isinstance(entry.host, str) else entry.host
    if len(hosts) == 1:
        return hosts * entry.replicas
    if len(hosts) != entry.replicas:
        raise ConfigError(f"{where}.host: {len(hosts)} addresses for {entry.replicas} "
                          f"replica(s); give one address, or one per replica")
    return tuple(hosts)


def validate(raw: Mapping[str, Any], source: str = "config") -> tuple[PipelineConfig,
                                                                      list[StagePlan]]:
    """Validate a raw config mapping: the models, then every stage.

    Returns
    -------
    (PipelineConfig, list of StagePlan)

    Raises
    ------
    ConfigError
        With every error of the file's structure listed, or the first stage error.
    """
    try:
        config = build_config(PipelineConfig, raw, source)
    except ConfigError as exc:
        raise ConfigError(_name_stages(str(exc), raw)) from exc
    return config, plan_stages(config, source)


def load(path: str | Path, overrides: Sequence[str] = ()) -> tuple[PipelineConfig,
                                                                   list[StagePlan]]:
    """Read, override and validate a config file (see :func:`validate`)."""
    return validate(load_raw(path, overrides), str(path))


def effective(config: PipelineConfig, plans: Sequence[StagePlan]) -> dict[str, Any]:
    """The config with every default filled in, as plain data (what ``validate`` prints)."""
    data = config_dict(config)
    for entry, plan in zip(data["stages"], plans, strict=True):
        entry["config"] = config_dict(plan.config)
        entry["inputs"] = list(plan.inputs)
        entry["output"] = plan.output
        entry["queue"] = config_dict(plan.queue)
        entry["replicas"] = plan.replicas
        entry["host"] = list(plan.hosts) or None
    return data
