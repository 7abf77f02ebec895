"""Sinks that need to know the topic of every message (recorder, tap).

A plain stage sees only the message; a message's class says its schema but not the topic it
travelled on (``blobs`` and ``external_blobs`` both carry :class:`~stages.messages.Blobs`).
Both runners call :meth:`TopicSink.process_topic` instead of ``process`` for these sinks.
"""

from __future__ import annotations

from collections.abc import Iterable

from stages.base import Stage
from stages.messages import Message


class TopicSink(Stage):
    """A sink told the topic of each message; ``INPUTS`` is set per instance by the plan."""

    OUTPUT = None

    def process_topic(self, topic: str, msg: Message) -> Iterable[Message]:
        """Handle ``msg`` received on ``topic``; a sink returns nothing."""
        raise NotImplementedError(f"{type(self).__name__} must implement process_topic()")

    def process(self, msg: Message) -> Iterable[Message]:
        return self.process_topic(type(msg).TOPIC, msg)
