"""Service sinks the runner adds to a chain: the tap, the recorder and the outputs digest.

- ``run.publish`` adds the tap (:class:`~pipeline.attach.tap.Publisher`) as the *first* consumer of
  every topic (stage 1), so in a single-process run a message is published before any stage
  handles it: an external stage waiting for an answer to a frame (an external detector reading
  frames from the tap) never waits for a frame the tap has not sent yet.
- ``run.record`` adds the MCAP recorder (:class:`~pipeline.attach.record.McapRecorder`) at the end.
- The digest (:class:`~pipeline.attach.digest.OutputsDigest`) is added whenever the chain produces
  ``points`` or ``tracks``; :func:`finish_report` moves its result to the report's
  ``outputs_digest`` (the sha256) and ``outputs`` (frames and record counts).

Their names start with an underscore; a config stage may not use them. Their input links are
lossless (``block``) whatever ``run.queue`` says: the recorder and the digest must see what the
chain produced, and the tap itself never blocks (it drops per slow subscriber).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.attach.digest import DigestConfig, OutputsDigest
from pipeline.attach.record import McapRecorder, RecorderConfig
from pipeline.attach.tap import Publisher, PublisherConfig
from pipeline.config import ConfigError, QueueConfig, RunConfig, StagePlan

TAP, RECORDER, DIGEST = "_tap", "_record", "_digest"
DIGEST_TOPICS = ("points", "tracks")


def produced_topics(plans: Sequence[StagePlan]) -> list[str]:
    """Topics the chain publishes, in stage order."""
    return [p.output for p in plans if p.output is not None]


def add_services(
    plans: Sequence[StagePlan], run: RunConfig, config_yaml: str = "",
    trace_dir: str | None = None,
) -> list[StagePlan]:
    """The chain with the service sinks ``run`` asks for (see the module docstring).

    Parameters
    ----------
    plans : sequence of StagePlan
        The validated chain, source first.
    run : RunConfig
    config_yaml : str
        Effective config, stored in a recording's metadata.
    trace_dir : str, optional
        Where the stages of a multi-process run leave their input traces for the recorder
        (:mod:`pipeline.attach.trace`).

    Raises
    ------
    ConfigError
        A stage uses a reserved name, or ``run.record.topics`` names a topic the chain does not
        produce.
    """
    reserved = [p.name for p in plans if p.name in (TAP, RECORDER, DIGEST)]
    if reserved:
        raise ConfigError(f"stage name(s) {reserved} are reserved for the runner's services; "
                          f"rename them")
    topics = produced_topics(plans)
    lossless = QueueConfig(policy="block", hwm=run.queue.hwm)
    out = list(plans)
    if run.publish is not None:
        config = PublisherConfig(
            endpoint=run.publish.endpoint, hwm=run.publish.hwm,
            wait_subscribers=run.publish.wait_subscribers, wait_s=run.ready_timeout_s,
            curve=run.curve, topics=tuple(topics), heartbeat_s=run.publish.heartbeat_s,
        )
        out.insert(1, StagePlan(TAP, "tap", Publisher, config, tuple(topics), None, lossless))
    if run.record is not None:
        rec = run.record
        wanted = topics if rec.topics is None else list(rec.topics)
        unknown = [t for t in wanted if t not in topics]
        if unknown:
            raise ConfigError(f"run.record.topics: {unknown} not produced by this chain; "
                              f"topics: {topics}")
        traced = tuple(p.name for p in plans if p.inputs and p.output is not None)
        config = RecorderConfig(path=rec.path, compression=rec.compression,
                                chunk_bytes=rec.chunk_bytes, flush_s=rec.flush_s,
                                config_yaml=config_yaml, trace_dir=trace_dir,
                                trace_stages=traced if trace_dir else (),
                                trace_wait_s=run.drain_timeout_s)
        out.append(StagePlan(RECORDER, "recorder", McapRecorder, config, tuple(wanted), None,
                             lossless))
    digested = tuple(t for t in DIGEST_TOPICS if t in topics)
    if digested:
        out.append(StagePlan(DIGEST, "digest", OutputsDigest, DigestConfig(digested), digested,
                             None, lossless))
    return out


def finish_report(report: dict[str, Any]) -> dict[str, Any]:
    """Move the digest's result out of ``scores`` into ``outputs_digest`` and ``outputs``."""
    digest = report["scores"].pop(DIGEST, None)
    report["outputs_digest"] = digest["sha256"] if digest else None
    report["outputs"] = ({"frames": digest["frames"], "records": digest["records"]}
                         if digest else None)
    return report
