"""Pipeline config: YAML -> validated models, ``--set`` overrides, and the stage plan.

Shape of a config file::

    run:                     # how to run (all keys optional)
      mode: inline           # inline (one process) | processes (one process per stage)
      frames: 200            # stop after this many source messages (null: until the source ends)
      rate_hz: null          # pace the source (null: as fast as the chain allows)
      transport: ipc         # ipc (sockets in ipc_dir, default a temp dir) | tcp
      queue: {policy: block, hwm: 4, depth: 2}   # default of every link
      report: null           # JSON report path
      record: {path: runs/live.mcap, topics: null}   # MCAP recording (null: none)
      publish: {endpoint: tcp://127.0.0.1:5555}      # tap: every topic on one PUB endpoint
      curve: {secret_key: keys/server.key_secret, allowed: keys/allowed}  # CURVE on the tap
    stages:                  # ordered: the source first, every input produced by an earlier stage
      - name: source
        kind: simulator      # a key of STAGE_KINDS (stages.STAGES + the pipeline's own)
        config: {...}        # the stage's own options (its Config dataclass)
      - name: detector
        kind: detector
        queue: {policy: drop_oldest}   # optional: policy of this stage's input links
        inputs: [frames]     # optional: topics to read (default: the class's INPUTS)
        output: blobs        # optional: topic to publish (default: the class's OUTPUT)

Every unknown key is an error that names the file, the key and the valid keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from stages import STAGES, stage_class
from stages.base import ConfigError, build_config

#: Every stage kind a config may name: the stages of :mod:`stages` plus the pipeline's own,
#: which own a socket and therefore live in this package.
STAGE_KINDS: dict[str, str] = {
    **STAGES,
    # the gate for an outside program's messages
    "external_input": "pipeline.attach.external:ExternalInput",
}

ENTRY_KEYS = ("name", "kind", "config", "inputs", "output", "queue")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueConfig(_Strict):
    """Queue policy of a link: ``block`` (lossless) or ``drop_oldest`` (live)."""

    policy: Literal["block", "drop_oldest"] = "block"
    hwm: int = Field(4, ge=1, description="ZeroMQ high-water mark (messages)")
    depth: int = Field(2, ge=1, description="receiver queue length for drop_oldest")


class RecordConfig(_Strict):
    """MCAP recording of a run (``pipeline.attach.record``)."""

    path: str = Field(min_length=1, description="output .mcap file")
    topics: tuple[str, ...] | None = Field(None, description="topics to record (null: all)")
    compression: Literal["zstd", "lz4", "none"] = "zstd"
    chunk_bytes: int = Field(1 << 20, ge=1024)
    flush_s: float = Field(1.0, gt=0, description="source seconds between chunk flushes")


class PublishConfig(_Strict):
    """The tap: every topic of the run re-published on one stable XPUB endpoint."""

    endpoint: str = Field(pattern=r"^(tcp|ipc|inproc)://.+",
                          description="e.g. tcp://127.0.0.1:5555 or ipc:///tmp/csist.pub")
    hwm: int = Field(64, ge=1, description="messages queued per subscriber before drops")
    wait_subscribers: int = Field(0, ge=0, description="subscriptions to wait for before "
                                                       "the source starts (0: none)")


class CurveConfig(_Strict):
    """CURVE encryption and client allow-list of the tap (``python -m pipeline keys DIR``)."""

    secret_key: str = Field(description="server key pair file, e.g. keys/server.key_secret")
    allowed: str = Field(description="folder of allowed client public keys (*.key)")


class RunConfig(_Strict):
    """How the chain runs."""

    mode: Literal["inline", "processes"] = "inline"
    frames: int | None = Field(None, ge=1)
    rate_hz: float | None = Field(None, gt=0)
    transport: Literal["ipc", "tcp"] = "ipc"
    ipc_dir: str | None = None
    tcp_host: str = "127.0.0.1"
    tcp_base_port: int = Field(5600, ge=1024, le=65000)
    queue: QueueConfig = QueueConfig()
    report: str | None = None
    max_message_bytes: int = Field(64 << 20, ge=1024)
    ready_timeout_s: float = Field(60.0, gt=0)
    drain_timeout_s: float = Field(30.0, gt=0)
    heartbeat_s: float = Field(1.0, gt=0)
    record: RecordConfig | None = None
    publish: PublishConfig | None = None
    curve: CurveConfig | None = None


class StageEntry(_Strict):
    """One stage of the chain as written in the file."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    kind: str
    config: dict[str, Any] = {}
    inputs: tuple[str, ...] | None = None
    output: str | None = None
    queue: QueueConfig | None = None


class PipelineConfig(_Strict):
    """A whole config file."""

    run: RunConfig = RunConfig()
    stages: tuple[StageEntry, ...] = Field(min_length=1)


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
    """

    name: str
    kind: str
    cls: type
    config: Any
    inputs: tuple[str, ...]
    output: str | None
    queue: QueueConfig
    replay_inputs: Any = None

    def build(self) -> Any:
        """A new stage object."""
        return self.cls(self.config)


# ---------------------------------------------------------------------------------------------
# Loading and overrides.


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key.sub=value`` into its key path and YAML-parsed value.

    Raises
    ------
    ConfigError
        If there is no ``=`` or the key is empty.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY.SUB=VALUE, e.g. run.frames=100")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), parsed


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
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a mapping")
        node = child
    node[keys[-1]] = value


def load_raw(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config file and apply ``--set`` overrides.

    Raises
    ------
    ConfigError
        If the file is missing, not YAML, not a mapping, or an override is malformed.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must be a mapping with 'run' and 'stages' keys")
    for text in overrides:
        try:
            apply_override(raw, *parse_override(text))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return raw


def _where(raw: Mapping[str, Any], loc: Sequence[Any]) -> str:
    """Readable location of a pydantic error, naming stages by their name."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int) and i > 0 and parts:
            entries = raw.get("stages") if loc[i - 1] == "stages" else None
            entry = entries[item] if isinstance(entries, list) and item < len(entries) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            parts[-1] += f"[{item}]" + (f" ({name})" if name else "")
        else:
            parts.append(str(item))
    return ".".join(parts)


def _format_errors(source: str, raw: Mapping[str, Any], exc: pydantic.ValidationError) -> str:
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        where = _where(raw, err["loc"])
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            model = _model_at(parent)
            valid = ", ".join(model.model_fields) if model else "?"
            lines.append(f"  {where}: unknown key; valid keys here: {valid}")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model that owns location ``loc`` of the config."""
    model: type[BaseModel] | None = PipelineConfig
    for item in loc:
        if isinstance(item, int) or model is None:
            continue
        field = model.model_fields.get(str(item))
        if field is None:
            return None
        model = next(
            (t for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
             if isinstance(t, type) and issubclass(t, BaseModel)),
            None,
        )
    return model


# ---------------------------------------------------------------------------------------------
# Validation of the stages against their classes and the wiring.


def _stage_config(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Validate a stage's options against its Config dataclass (names, then types)."""
    config = build_config(cls.Config, values, where)
    try:
        adapter = pydantic.TypeAdapter(cls.Config)
    except pydantic.PydanticSchemaGenerationError:
        return config  # field types pydantic cannot check: names were checked above
    try:
        return adapter.validate_python(dict(values))
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from exc


def plan_stages(config: PipelineConfig, source: str = "config") -> list[StagePlan]:
    """Resolve every stage's class, validate its options and check the wiring.

    Raises
    ------
    ConfigError
        Unknown kind, invalid option, duplicate name, a topic with two producers, an input no
        earlier stage produces, or not exactly one source first.
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
        stage_config = _stage_config(cls, entry.config, f"{where}.config")
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
        plans.append(StagePlan(entry.name, entry.kind, cls, stage_config, inputs, output,
                               entry.queue or config.run.queue))
    return plans


def validate(raw: Mapping[str, Any], source: str = "config") -> tuple[PipelineConfig,
                                                                      list[StagePlan]]:
    """Validate a raw config mapping: the models, then every stage.

    Returns
    -------
    (PipelineConfig, list of StagePlan)

    Raises
    ------
    ConfigError
        With every model error listed, or the first stage error.
    """
    try:
        config = PipelineConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_errors(source, raw, exc)) from exc
    return config, plan_stages(config, source)


def load(path: str | Path, overrides: Sequence[str] = ()) -> tuple[PipelineConfig,
                                                                   list[StagePlan]]:
    """Read, override and validate a config file (see :func:`validate`)."""
    return validate(load_raw(path, overrides), str(path))


def effective(config: PipelineConfig, plans: Sequence[StagePlan]) -> dict[str, Any]:
    """The config with every default filled in, as plain data (what ``validate`` prints)."""
    data = config.model_dump(mode="json")
    for entry, plan in zip(data["stages"], plans, strict=True):
        entry["config"] = _plain(dataclasses.asdict(plan.config))
        entry["inputs"] = list(plan.inputs)
        entry["output"] = plan.output
        entry["queue"] = plan.queue.model_dump(mode="json")
    return data


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so the result dumps as plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
