"""Rate-limited warnings that never drop silently.

A flood of malformed messages must not flood the log, and must not vanish from it either.
:class:`LimitedWarnings` logs the first ``burst`` warnings of each kind as they come; after
that, at most one line per ``interval_s`` says how many more came since when, with the last
one's text (``"... and 21 more since 12:01:03 (last: ...)"``), and :meth:`flush` (called when
the socket closes) says what is still untold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Kind:
    logged: int = 0
    untold: int = 0
    since: float = 0.0  # wall time of the first untold warning
    last_text: str = ""
    last_summary: float = 0.0  # monotonic time of the last summary line


class LimitedWarnings:
    """Per-kind warning limiter (see the module docstring).

    Parameters
    ----------
    logger : logging.Logger
    burst : int
        Warnings of one kind logged one by one before the summaries start.
    interval_s : float
        Shortest time between two summary lines of one kind.
    clock, wall : callables
        Monotonic and wall clocks in seconds (tests replace them).
    """

    def __init__(self, logger: logging.Logger, burst: int = 3, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.logger, self.burst, self.interval_s = logger, burst, interval_s
        self.clock, self.wall = clock, wall
        self._kinds: dict[str, _Kind] = {}

    def warn(self, kind: str, text: str) -> None:
        """Log ``text`` (a warning of ``kind``), or count it towards the next summary."""
        state = self._kinds.setdefault(kind, _Kind())
        if state.logged < self.burst:
            state.logged += 1
            self.logger.warning("%s", text)
            if state.logged == self.burst:
                state.last_summary = self.clock()
            return
        if state.untold == 0:
            state.since = self.wall()
        state.untold += 1
        state.last_text = text
        if self.clock() - state.last_summary >= self.interval_s:
            self._summarise(state)

    def flush(self) -> None:
        """Say what is still untold, for every kind."""
        for state in self._kinds.values():
            if state.untold:
                self._summarise(state)

    def _summarise(self, state: _Kind) -> None:
        since = time.strftime("%H:%M:%S", time.localtime(state.since))
        self.logger.warning("... and %d more since %s (last: %s)", state.untold, since,
                            state.last_text)
        state.untold = 0
        state.last_summary = self.clock()
