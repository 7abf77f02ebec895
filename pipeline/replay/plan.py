"""``python -m pipeline replay``: feed recorded or imported data into the chain of a config.

The config's source (its first stage) is replaced by a replay source
(:mod:`pipeline.replay.importers`, or :mod:`pipeline.replay.seqcsist` for a dataset), and the
chain is cut where the replayed topics enter it:

- every stage whose output topic is replayed is left out (the recording stands in for it), and
  so is every stage that needs a topic neither replayed nor produced by a kept stage (the
  stages upstream of the cut; a sink that needs such a topic, e.g. ``scoring`` without
  ``frames``, is named in the log);
- replaying ``frames`` (the default) therefore runs the whole chain; replaying ``frames`` and
  ``blobs`` starts at the cropper; ``windows`` at the unmixer; ``points`` at the tracker.

One replayed topic is the source's output. Several are sent by the source on the internal
topic ``replay`` and split again by one :class:`Demux` stage per topic (by schema, so two
replayed topics must carry different schemas).

A SeqCSIST dataset replays as windows through the chain's stages that lead from ``windows`` to
``points`` (unmixer, extractor), scored by :class:`~pipeline.replay.seqcsist.CsoMapScorer`.

``lossless`` makes every link ``block`` and replays as fast as the chain goes (rate 0): with
the config of the recorded run, the replay of a recording of its ``frames`` reproduces the
run's points and tracks exactly, so the reports' ``outputs_digest`` values are equal.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.attach.record import read_recording, recording_info
from pipeline.config import ConfigError, PipelineConfig, QueueConfig, StagePlan, validate
from pipeline.replay.formats import FORMATS, detect_format
from stages.base import Stage
from stages.messages import MESSAGE_TYPES, Message

logger = logging.getLogger(__name__)

REPLAY_TOPIC = "replay"
SOURCE_NAME = "replay"
#: Run options a recorded config must not carry into a replay (they would write or bind).
RECORDED_ONLY = ("record", "publish", "curve", "report")


@dataclasses.dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how (the ``replay`` command line).

    Attributes
    ----------
    format : str
        A key of :data:`pipeline.replay.formats.FORMATS`; "auto" decides from the path.
    topics : tuple of str or None
        MCAP topics to replay (None: ``frames``).
    rate : float
        Multiple of the recorded timing; 0 = as fast as possible.
    loop : bool
    start_s, end_s : float or None
        Time window in seconds from the recording start.
    fps : float or None
        Frame rate of files without time (None: 25, or a video's own rate).
    key : str or None
        Array of an ``.npz`` stack.
    split : str or None
        Split of a SeqCSIST dataset root.
    lossless : bool
        Every link ``block`` and rate 0 (deterministic replay).
    """

    format: str = "auto"
    topics: tuple[str, ...] | None = None
    rate: float = 1.0
    loop: bool = False
    start_s: float | None = None
    end_s: float | None = None
    fps: float | None = None
    key: str | None = None
    split: str | None = None
    lossless: bool = False


# ---------------------------------------------------------------------------------------------
# Demultiplexing several replayed topics.


@dataclasses.dataclass(frozen=True)
class DemuxConfig:
    """Options of :class:`Demux`: the schema it passes on (e.g. ``csist.Blobs``)."""

    schema: str

    def __post_init__(self) -> None:
        if self.schema not in MESSAGE_TYPES:
            raise ValueError(f"unknown schema {self.schema!r}")


class Demux(Stage):
    """Passes on the messages of one schema from the multi-topic ``replay`` stream."""

    Config = DemuxConfig
    INPUTS = (REPLAY_TOPIC,)

    def process(self, msg: Message) -> Iterable[Message]:
        return [msg] if msg.SCHEMA == self.config.schema else []


def topic_schemas(path: str | Path, topics: Sequence[str]) -> dict[str, str]:
    """Schema of each topic of a recording, from its first message."""
    found: dict[str, str] = {}
    for topic, msg in read_recording(path, topics):
        found.setdefault(topic, msg.SCHEMA)
        if len(found) == len(topics):
            break
    return found


# ---------------------------------------------------------------------------------------------
# Cutting the chain.


def cut_chain(
    plans: Sequence[StagePlan], provided: Iterable[str]
) -> tuple[list[StagePlan], list[str]]:
    """The stages after the source that run on the ``provided`` topics (module docstring).

    Returns
    -------
    kept : list of StagePlan
    left_out : list of str
        One line per stage left out, saying why.

    Raises
    ------
    ConfigError
        No kept stage reads a provided topic.
    """
    provided = set(provided)
    available, kept, left_out = set(provided), [], []
    for plan in plans[1:]:
        if plan.output in provided:
            left_out.append(f"{plan.name} (its output {plan.output!r} is replayed)")
            continue
        missing = [t for t in plan.inputs if t not in available]
        if missing:
            left_out.append(f"{plan.name} (needs {missing}, not replayed)")
            continue
        kept.append(plan)
        if plan.output is not None:
            available.add(plan.output)
    if not any(provided & set(p.inputs) for p in kept):
        raise ConfigError(f"no stage of the config reads the replayed topics {sorted(provided)}"
                          f" (left out: {'; '.join(left_out) or 'none'})")
    return kept, left_out


def leading_to(plans: Sequence[StagePlan], topic: str) -> list[StagePlan]:
    """The stages of ``plans`` needed to produce ``topic`` (in their order)."""
    needed, out = {topic}, []
    for plan in reversed(plans):
        if plan.output in needed:
            out.append(plan)
            needed.update(plan.inputs)
    return out[::-1]


def with_traces(plans: Sequence[StagePlan], traces: dict | None) -> list[StagePlan]:
    """``plans`` with the live run's input traces (:mod:`pipeline.attach.trace`) of the stages that
    have one: each then processes exactly the inputs it processed live."""
    if not traces:
        return list(plans)
    applied = [p.name for p in plans if p.name in traces]
    logger.info("replay: the live run's input traces of %s are applied (inputs it dropped "
                "are skipped)", applied)
    return [dataclasses.replace(p, replay_inputs=traces[p.name]) if p.name in traces else p
            for p in plans]


# ---------------------------------------------------------------------------------------------
# Planning.


def recorded_config(text: str) -> dict[str, Any]:
    """The config stored in a recording, without the run options that write or bind
    (:data:`RECORDED_ONLY`: a replay must not overwrite the recording or take the live ports)."""
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ConfigError("the config stored in the recording is not a mapping; pass --config")
    if isinstance(raw.get("run"), dict):
        for key in RECORDED_ONLY:
            raw["run"].pop(key, None)
    return raw


def for_replay(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw config without ``run.frames`` and ``run.rate_hz``: a replay plays its
    whole source (``--frames``/``--end`` limit it) and replay sources pace themselves by the
    recorded time. Apply ``--set`` overrides after this."""
    raw = copy.deepcopy(raw)
    if isinstance(raw.get("run"), dict):
        raw["run"].pop("frames", None)
        raw["run"].pop("rate_hz", None)
    return raw


def lossless_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw config whose every queue (``run.queue`` and per stage) is ``block``."""
    raw = copy.deepcopy(raw)
    run = raw.get("run")
    if run is None:
        run = raw["run"] = {}
    if not isinstance(run, dict):
        return raw  # validation will name the problem
    run["queue"] = {**(run.get("queue") or {}), "policy": "block"}
    for entry in raw.get("stages") or []:
        if isinstance(entry, dict) and isinstance(entry.get("queue"), dict):
            entry["queue"] = {**entry["queue"], "policy": "block"}
    return raw


def _source_plan(path: str, fmt: str, options: ReplayOptions,
                 queue: QueueConfig) -> tuple[StagePlan, tuple[str, ...]]:
    """The replay source of ``fmt`` and the topics it provides."""
    timing = {"rate": 0.0 if options.lossless else options.rate, "loop": options.loop,
              "start_s": options.start_s, "end_s": options.end_s}
    if fmt != "mcap" and options.topics not in (None, ("frames",)):
        raise ConfigError(f"--topics applies to MCAP recordings; a {fmt} source gives frames")
    try:
        config, cls, topics = FORMATS[fmt].build(path, options, timing)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"replay of {path}: {exc}") from exc
    output = topics[0] if len(topics) == 1 else REPLAY_TOPIC
    return StagePlan(SOURCE_NAME, f"replay-{fmt}", cls, config, (), output, queue), topics


def _dataset_plans(path: str, options: ReplayOptions, plans: Sequence[StagePlan],
                   queue: QueueConfig) -> list[StagePlan]:
    from pipeline.replay.seqcsist import CsoMapScorer, DatasetConfig, DatasetWindowsSource

    if options.topics not in (None, ("windows",)) or options.loop or options.start_s or (
            options.end_s is not None):
        raise ConfigError("--topics, --loop, --start and --end do not apply to a SeqCSIST "
                          "dataset (it is replayed whole, as windows)")
    kept, _ = cut_chain(plans, ("windows",))
    chain = leading_to(kept, "points")
    if not chain:
        raise ConfigError("the config has no stages leading from 'windows' to 'points' "
                          "(unmixer and extractor); a dataset cannot be scored with it")
    source = StagePlan(SOURCE_NAME, "replay-seqcsist", DatasetWindowsSource,
                       DatasetConfig(path=path, split=options.split, fps=options.fps or 25.0),
                       (), "windows", queue)
    scorer = StagePlan("cso_map", "cso_map", CsoMapScorer, CsoMapScorer.Config(),
                       ("windows", "points"), None, queue)
    return [source, *chain, scorer]


def plan_replay(
    path: str | Path, raw: dict[str, Any], options: ReplayOptions, where: str = "config"
) -> tuple[PipelineConfig, list[StagePlan]]:
    """Validate ``raw`` for replay and build the replay chain (see the module docstring).

    Parameters
    ----------
    path : path
        The replay source.
    raw : dict
        Raw config (YAML mapping): :func:`for_replay`, then ``--set`` overrides applied.
    options : ReplayOptions
    where : str
        Name of the config in error messages.

    Raises
    ------
    ConfigError
        Unknown source, invalid config, or a chain that cannot take the replayed topics.
    """
    path = str(path)
    fmt = detect_format(path) if options.format == "auto" else options.format
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; expected one of {['auto', *FORMATS]}")
    config, plans = validate(lossless_raw(raw) if options.lossless else raw, where)
    if any(p.name in (SOURCE_NAME, "cso_map") or p.name.startswith("demux_") for p in plans):
        raise ConfigError(f"{where}: stage names {SOURCE_NAME!r}, 'cso_map' and 'demux_*' are "
                          f"used by replay; rename the stage")
    queue = plans[0].queue
    if FORMATS[fmt].build is None:
        return config, _dataset_plans(path, options, plans, queue)
    source, topics = _source_plan(path, fmt, options, queue)
    kept, left_out = cut_chain(plans, topics)
    for line in left_out:
        logger.info("replay: not running %s", line)
    if options.lossless and fmt == "mcap":
        kept = with_traces(kept, recording_info(path).traces)
    demux = []
    if len(topics) > 1:
        schemas = topic_schemas(path, topics)
        shared = {s for s in schemas.values() if list(schemas.values()).count(s) > 1}
        if shared:
            raise ConfigError(f"topics {sorted(t for t, s in schemas.items() if s in shared)} "
                              f"carry the same schema {sorted(shared)}; replay them separately")
        demux = [StagePlan(f"demux_{t}", "demux", Demux, DemuxConfig(schemas[t]),
                           (REPLAY_TOPIC,), t, queue) for t in topics]
    return config, [source, *demux, *kept]
