"""Calling a stage the same way in every runner: pace the source, time each call, stamp its
outputs, count.

Stamps are ``"<stage>.in"`` / ``"<stage>.out"`` Unix times in ns (``time.time_ns``, comparable
between processes and, with synchronised clocks, hosts). An output message inherits the stamps
of the input that produced it plus the stage's own pair; a source stamps only ``.out``. Flushed
outputs carry only the stage's ``.out`` (they have no single input).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Iterator, Mapping

from models.config import ConfigError
from models.weights import WeightsError
from pipeline.run.report import StageStats
from stages.base import Stage, TopicSink
from stages.messages import Message, PipelineError

#: Errors whose message names the problem and the fix (a bad file, config or input): the run
#: reports them in one line; their traceback is logged only at debug level (``-v``). Any other
#: exception is a defect, logged with its traceback.
USER_ERRORS = (PipelineError, ConfigError, WeightsError)
#: Error classes that name their own fix, from modules a stage process may never import
#: (``sim.dataset`` pulls in scipy: 0.4 s of start-up in every one of a chain's processes).
LAZY_USER_ERRORS = (("sim.dataset", "DatasetError"),)


def traceback_wanted(exc: BaseException) -> bool:
    """Whether the failure ``exc`` of a stage deserves its traceback in the log."""
    lazy = tuple(getattr(sys.modules[module], name) for module, name in LAZY_USER_ERRORS
                 if module in sys.modules)  # never imported: ``exc`` cannot be one
    return (not isinstance(exc, USER_ERRORS + lazy)
            or logging.getLogger().isEnabledFor(logging.DEBUG))


def pace(rate_hz: float | None) -> Iterator[float]:
    """Seconds to wait before each source message so that messages go out at ``rate_hz``.

    Yields 0 forever when ``rate_hz`` is None. A source that falls behind catches up by at
    most one period (no burst after a stall).
    """
    period = 1.0 / rate_hz if rate_hz else 0.0
    next_t = time.monotonic()
    while True:
        yield max(0.0, next_t - time.monotonic())
        next_t = max(next_t + period, time.monotonic() - period)


def _stamp(msg: Message, stamps: Mapping[str, int]) -> Message:
    return dataclasses.replace(msg, stamps=dict(stamps))


def next_from_source(source: Iterator[Message], name: str, stats: StageStats) -> Message | None:
    """Take the next message of a source iterator, stamped; None when the source is exhausted."""
    t_in = time.time_ns()
    msg = next(source, None)
    if msg is None:
        return None
    t_out = time.time_ns()
    stats.record(t_in, t_out, 0, 1, None)
    return _stamp(msg, {f"{name}.out": t_out})


def process(
    stage: Stage, name: str, msg: Message, stats: StageStats, topic: str | None = None
) -> list[Message]:
    """Run ``stage.process(msg)`` (``process_topic(topic, msg)`` for a
    :class:`~stages.base.TopicSink`); returns its outputs with stamps."""
    t_in = time.time_ns()
    if isinstance(stage, TopicSink):
        outs = list(stage.process_topic(topic or type(msg).TOPIC, msg))
    else:
        outs = list(stage.process(msg))
    t_out = time.time_ns()
    age = t_out - min(msg.stamps.values()) if msg.stamps else None
    stats.record(t_in, t_out, 1, len(outs), age)
    stamps = {**msg.stamps, f"{name}.in": t_in, f"{name}.out": t_out}
    return [_stamp(out, stamps) for out in outs]


def flush(stage: Stage, name: str, stats: StageStats) -> list[Message]:
    """Run ``stage.flush()``; returns its outputs stamped with the stage's ``.out`` only."""
    outs = list(stage.flush())
    t_out = time.time_ns()
    stats.record_flush(t_out, len(outs))
    return [_stamp(out, {f"{name}.out": t_out}) for out in outs]
