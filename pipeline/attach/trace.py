"""Input traces: which (topic, seq) each stage of a multi-process run actually processed.

With ``drop_oldest`` links a live run loses messages when a stage falls behind, so what a
stage processed depends on timing. The recording of such a run keeps, per producing stage, the
seqs it processed on each input topic (a metadata record ``csist.trace``); a ``--lossless``
replay then gives each stage exactly those inputs and skips the others, which reproduces the
live run's outputs (and its ``outputs_digest``) even though it dropped messages.

This is exact because every stage is deterministic given the *set* of inputs it processes:
each topic arrives in ``seq`` order, and a stage joining several topics by ``seq`` pairs the
same seqs whatever the interleaving of the topics.

Traces travel as small JSON files: each worker writes ``<dir>/<stage>.json`` after its last
input and before its EndOfStream markers; the recorder waits for the files of all producing
stages when its own stream ends and stores them. A single-process run drops nothing and writes
no trace.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Name of the MCAP metadata record holding the traces (key ``stages``: JSON).
TRACE_METADATA = "csist.trace"


class SeqTrace:
    """Seqs seen per topic, kept as sorted inclusive ranges ``[first, last]``."""

    def __init__(self, ranges: Mapping[str, Iterable[Iterable[int]]] | None = None) -> None:
        self._ranges: dict[str, list[list[int]]] = {
            topic: [[int(a), int(b)] for a, b in spans] for topic, spans in (ranges or {}).items()
        }
        self._starts = {t: [a for a, _ in spans] for t, spans in self._ranges.items()}

    def add(self, topic: str, seq: int) -> None:
        """Record ``seq`` on ``topic`` (seqs of one topic arrive in increasing order)."""
        spans = self._ranges.setdefault(topic, [])
        if spans and seq == spans[-1][1] + 1:
            spans[-1][1] = seq
        elif not spans or seq > spans[-1][1]:
            spans.append([seq, seq])
            self._starts.setdefault(topic, []).append(seq)

    def __contains__(self, item: tuple[str, int]) -> bool:
        topic, seq = item
        spans = self._ranges.get(topic)
        if spans is None:
            return False
        i = bisect.bisect_right(self._starts[topic], seq) - 1
        return i >= 0 and spans[i][0] <= seq <= spans[i][1]

    def topics(self) -> list[str]:
        return list(self._ranges)

    def to_dict(self) -> dict[str, list[list[int]]]:
        return {t: [list(s) for s in spans] for t, spans in self._ranges.items()}


def write_trace(folder: str | Path, stage: str, trace: SeqTrace) -> None:
    """Write ``<folder>/<stage>.json`` atomically (readers never see half a file)."""
    folder = Path(folder)
    tmp = folder / f".{stage}.json.tmp"
    tmp.write_text(json.dumps(trace.to_dict()))
    os.replace(tmp, folder / f"{stage}.json")


def read_trace(folder: str | Path, stage: str) -> SeqTrace | None:
    """The trace written by ``stage``, or None when it is not there (yet)."""
    path = Path(folder) / f"{stage}.json"
    if not path.is_file():
        return None
    return SeqTrace(json.loads(path.read_text()))
