"""The stage protocol: what every step of the chain looks like to the runner.

A stage is a plain class built from a small frozen config dataclass (the project's one config
style, :mod:`models.config`)::

    @dataclass(frozen=True)
    class DoublerConfig:
        factor: float = 2.0

    class Doubler(Stage):
        Config = DoublerConfig
        INPUTS = ("frames",)
        OUTPUT = "frames2"

        def process(self, msg):
            yield replace(msg, image=msg.image * self.config.factor, stamps={})

The runner calls, in this order: ``start()`` once, ``process(msg)`` for every message that
arrives on one of the ``INPUTS`` topics (in ``seq`` order per topic, but topics interleave in
any order, so a stage with several inputs joins them by ``seq`` with :class:`SeqJoin`),
``flush()`` once at the end of the stream so buffered items drain, ``summary()`` for the run
report, and ``stop()`` once (also after an error). Every message returned by
``process``/``flush`` is published on ``OUTPUT``. A stage never touches sockets, the clock or
``stamps``; the same object runs in one process over an iterator (tests, replay, evaluation) or
in its own process behind ZeroMQ.

A source is a :class:`Source`: no inputs, and ``__iter__`` yields its messages (frames) in
``seq`` order. The runner decides how many it takes (``--frames``) and at what rate. A sink that
needs to know the topic of each message is a :class:`TopicSink`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

from models.config import ConfigError, build_config
from stages.messages import Message


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """Config of a stage that takes no options."""


class Stage:
    """Base class of a processing stage (see the module docstring).

    Class attributes
    ----------------
    Config : dataclass type
        The stage's frozen config; built with :func:`models.config.build_config`.
    INPUTS : tuple of str
        Topics the stage consumes (default topics; the pipeline config may rename them).
    OUTPUT : str or None
        Topic the stage publishes on; None for a sink.
    REPLICABLE : bool
        True when each input message's output depends on that message alone (no state that
        changes the results), so ``replicas: N`` may share its stream between N processes.
    RAW_INPUT : bool
        True for a stage that only forwards what it receives (the tap): in its own process it
        gets each message as the frames it arrived in (``pipeline.wire.codec.WireMessage``,
        header checked, fields not decoded), inline as the message object.
    SENSOR_FIELDS : dict of str to str
        Fields of the sensor profile (:class:`sim.sensor.SensorProfile`, a pipeline config's
        ``sensor`` section) the stage takes, and the Config fields they fill where the
        stage's own config does not set them.

    Parameters
    ----------
    config : Config instance, optional
        Defaults to ``Config()``.
    """

    Config: ClassVar[type] = NoConfig
    INPUTS: ClassVar[tuple[str, ...]] = ()
    OUTPUT: ClassVar[str | None] = None
    REPLICABLE: ClassVar[bool] = False
    RAW_INPUT: ClassVar[bool] = False
    SENSOR_FIELDS: ClassVar[dict[str, str]] = {}

    def __init__(self, config: Any = None) -> None:
        if config is None:
            config = build_config(self.Config, None)
        elif not isinstance(config, self.Config):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.Config.__name__}, "
                f"got {type(config).__name__}; build it with {type(self).__name__}.from_dict"
            )
        self.config = config

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, where: str = "") -> Stage:
        """Build the stage from a mapping of config options (unknown keys are errors)."""
        return cls(build_config(cls.Config, values, where or cls.__name__))

    def start(self) -> None:
        """Acquire resources (load weights, open files); called once before the first message."""

    def process(self, msg: Message) -> Iterable[Message]:
        """Handle one input message; return the messages to publish (possibly none)."""
        raise NotImplementedError(f"{type(self).__name__} must implement process(msg)")

    def flush(self) -> Iterable[Message]:
        """Return buffered messages at the end of the stream; called once after the last input."""
        return ()

    def idle(self) -> Iterable[Message]:
        """Called (one process per stage) about every 0.1 s while no input arrives; return
        messages to publish. The tap uses it for its heartbeat. The default: nothing."""
        return ()

    def stop(self) -> None:
        """Release resources; called once at the end, also after an error."""

    def summary(self) -> dict[str, Any] | None:
        """Results for the run report (JSON-able), e.g. a scoring sink's scores; called after
        ``flush``. The default has nothing to report."""
        return None

    def input_counters(self) -> dict[str, int]:
        """Counters of input the stage receives itself rather than over the chain's links
        (an outside program's socket), with the names of the link counters
        (``decode_errors``, ``dropped``, ...): the runner adds them to the stage's row of the
        report, so one number says what was lost at that input. The default: none."""
        return {}


class Source(Stage):
    """Base class of a stage with no inputs: iterating it yields its messages in ``seq`` order."""

    INPUTS: ClassVar[tuple[str, ...]] = ()
    OUTPUT: ClassVar[str | None] = "frames"

    def __iter__(self) -> Iterator[Message]:
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__()")

    def process(self, msg: Message) -> Iterable[Message]:
        raise TypeError(f"{type(self).__name__} is a source; it takes no input messages")


class TopicSink(Stage):
    """A sink told the topic each message travelled on (the recorder, the tap, the digest).

    A plain stage sees only the message, and a message's class names its schema but not its
    topic (``blobs`` and ``external_blobs`` both carry :class:`~stages.messages.Blobs`). Both
    runners call :meth:`process_topic` instead of ``process`` for these sinks; ``INPUTS`` is
    set per instance by the plan.
    """

    OUTPUT = None

    def process_topic(self, topic: str, msg: Message) -> Iterable[Message]:
        """Handle ``msg`` received on ``topic``; a sink returns nothing."""
        raise NotImplementedError(f"{type(self).__name__} must implement process_topic()")

    def process(self, msg: Message) -> Iterable[Message]:
        return self.process_topic(type(msg).TOPIC, msg)


class SeqJoin:
    """Pairs messages of several types that describe the same frame ``seq``.

    Each input type arrives in increasing ``seq`` order (topics interleave freely). When the
    last missing part of a seq arrives, that group is returned and every older, still
    incomplete seq is dropped: its missing parts can no longer arrive.

    Parameters
    ----------
    kinds : tuple of message types
        The types to join; a message of another type is an error.
    max_pending : int
        At most this many incomplete seqs are held (oldest dropped first), so a silent topic
        cannot grow the buffer without bound.
    on_drop : callable, optional
        Called with ``{type: message}`` of each seq dropped incomplete (the parts that came).
    """

    def __init__(self, kinds: tuple[type[Message], ...], max_pending: int = 16,
                 on_drop: Callable[[dict[type[Message], Message]], None] | None = None) -> None:
        self.kinds = tuple(kinds)
        self.max_pending = max_pending
        self.on_drop = on_drop
        self._pending: dict[int, dict[type[Message], Message]] = {}
        #: Seqs dropped incomplete so far.
        self.dropped = 0

    def _drop(self, seq: int) -> None:
        parts = self._pending.pop(seq)
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop(parts)

    def drain(self) -> None:
        """End of stream: drop every incomplete seq (oldest first)."""
        for seq in sorted(self._pending):
            self._drop(seq)

    def add(self, msg: Message) -> dict[type[Message], Message] | None:
        """Store ``msg``; return ``{type: message}`` when its seq becomes complete, else None.

        ``msg`` may also be a message still encoded (a stage with ``RAW_INPUT``): any object
        with ``seq`` and ``message_type``, stored as it is."""
        kind = getattr(msg, "message_type", type(msg))
        if kind not in self.kinds:
            names = ", ".join(k.__name__ for k in self.kinds)
            raise ConfigError(f"got a {kind.__name__} message; this stage takes {names}")
        parts = self._pending.setdefault(msg.seq, {})
        parts[kind] = msg
        if len(parts) == len(self.kinds):
            for seq in sorted(s for s in self._pending if s < msg.seq):
                self._drop(seq)
            return self._pending.pop(msg.seq)
        while len(self._pending) > self.max_pending:
            self._drop(min(self._pending))
        return None
