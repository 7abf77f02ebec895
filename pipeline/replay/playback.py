"""Playback of recorded or imported messages: time window, looping and pacing.

Every replay source yields one pass of its messages through
:meth:`ReplaySource.pass_once`, already limited to the time window ``start_s`` ≤ t < ``end_s``
(seconds from the recording start); this base class adds:

- **looping** (``loop``): pass k > 0 repeats the messages with ``seq`` shifted by k × the seq
  span of one pass and ``t_source_ns`` by k × (its duration + one frame period), so seqs keep
  increasing and the chain sees one long stream;
- **pacing** (``rate``): message i leaves at ``(t_i − t_0) / rate`` after the first one, i.e.
  ``rate`` × the recorded source timing (``t_source_ns``); ``rate = 0`` replays as fast as the
  chain takes it. Messages whose time has passed (the chain is slower than the rate) leave at
  once; pacing never changes content, so outputs do not depend on it.

Pacing is the only wall-clock use and lives here, in the runner's side, never in a stage.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator

from stages.base import Source
from stages.messages import Message


@dataclasses.dataclass(frozen=True)
class ReplayTiming:
    """Timing options shared by every replay source.

    Attributes
    ----------
    rate : float
        Multiple of the recorded timing (1 = real time, 2 = twice as fast); 0 = as fast as
        possible.
    loop : bool
        Repeat the recording until the run is stopped (or ``run.frames`` is reached).
    start_s, end_s : float or None
        Replay only ``start_s <= t < end_s``, seconds from the recording start (None: from
        the start / to the end).
    """

    rate: float = 1.0
    loop: bool = False
    start_s: float | None = None
    end_s: float | None = None

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0 (0 = as fast as possible), got {self.rate}")
        if self.start_s is not None and self.start_s < 0:
            raise ValueError(f"start_s must be >= 0, got {self.start_s}")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")


def looped(one_pass: Callable[[], Iterator[Message]], loop: bool) -> Iterator[Message]:
    """The messages of ``one_pass()``, repeated with shifted seq and time when ``loop`` (each
    sensor's ``sensor_seq`` shifted by its own span, so every sensor's frames go on
    counting)."""
    seq_shift = t_shift = 0
    sensor_shift: dict[int, int] = {}
    while True:
        seqs, times = [], []
        sensor_seqs: dict[int, list[int]] = {}
        for msg in one_pass():
            seqs.append(msg.seq)
            times.append(msg.t_source_ns)
            sensor_seqs.setdefault(msg.sensor, []).append(msg.sensor_seq)
            if seq_shift:
                msg = dataclasses.replace(
                    msg, seq=msg.seq + seq_shift, t_source_ns=msg.t_source_ns + t_shift,
                    sensor_seq=msg.sensor_seq + sensor_shift.get(msg.sensor, 0))
            yield msg
        if not loop or not seqs:
            return
        seq_span = max(seqs) - min(seqs)
        duration = max(times) - min(times)
        period = duration // seq_span if seq_span else 0
        seq_shift += seq_span + 1
        t_shift += duration + period
        for sensor, values in sensor_seqs.items():
            sensor_shift[sensor] = sensor_shift.get(sensor, 0) + max(values) - min(values) + 1


def paced(messages: Iterator[Message], rate: float) -> Iterator[Message]:
    """``messages``, each released ``(t − t_first) / rate`` after the first (0: no wait)."""
    if not rate:
        yield from messages
        return
    first_t = first_wall = None
    for msg in messages:
        if first_t is None:
            first_t, first_wall = msg.t_source_ns, time.monotonic()
        else:
            wait = first_wall + (msg.t_source_ns - first_t) / 1e9 / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield msg


class ReplaySource(Source):
    """Base of the replay sources; subclasses implement :meth:`pass_once`."""

    def pass_once(self) -> Iterator[Message]:
        """One pass over the messages in the time window, in order."""
        raise NotImplementedError(f"{type(self).__name__} must implement pass_once()")

    def __iter__(self) -> Iterator[Message]:
        return paced(looped(self.pass_once, self.config.loop), self.config.rate)


def frame_window(count: int, fps: float, timing: ReplayTiming) -> range:
    """Indices of the frames ``i`` (at ``i / fps`` s) inside the time window of ``timing``."""
    def index(seconds: float) -> int:  # first frame at or after ``seconds`` (1e-9 tolerance)
        return math.ceil(round(seconds * fps, 9))

    first = 0 if timing.start_s is None else index(timing.start_s)
    last = count if timing.end_s is None else min(count, index(timing.end_s))
    return range(first, max(first, last))
