"""A lock-free flag shared by processes: what the runner and its workers signal each other with.

``multiprocessing.Event`` guards its state with a lock; a worker killed with SIGKILL while it
holds that lock (every ``is_set()`` takes it for a moment, and workers ask many times a second)
leaves it held for good, and the next ``set()`` or ``is_set()`` anywhere, the runner's included,
waits forever. A :class:`Flag` is one byte of shared memory written only from 0 to 1, so there
is nothing to hold: a dead process cannot block the others.
"""

from __future__ import annotations

import time
from typing import Any

#: Longest sleep between two looks at the flag in :meth:`Flag.wait` (s).
WAIT_STEP_S = 0.01


class Flag:
    """Set-once flag with the ``is_set`` / ``set`` / ``wait`` calls of an Event.

    Parameters
    ----------
    mp : multiprocessing context
        The context whose shared memory holds the byte (the one that starts the workers).
    """

    def __init__(self, mp: Any) -> None:
        self._value = mp.RawValue("b", 0)

    def is_set(self) -> bool:
        return bool(self._value.value)

    def set(self) -> None:
        self._value.value = 1

    def wait(self, timeout_s: float) -> bool:
        """Whether the flag is set, waiting up to ``timeout_s`` seconds for it (looking every
        :data:`WAIT_STEP_S` at most, so a set flag is seen within 10 ms)."""
        deadline = time.monotonic() + timeout_s
        while not self._value.value:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, WAIT_STEP_S))
        return True
