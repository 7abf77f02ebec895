"""The runner's shared flags survive the SIGKILL of a process that was reading them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

from pipeline.run.flag import Flag


def _spin(flag: Flag, started: Flag | None = None) -> None:
    if started is not None:
        started.set()
    while not flag.is_set():
        pass


def test_flag_is_seen_across_processes_and_wait_times_out():
    mp = multiprocessing.get_context("spawn")
    flag = Flag(mp)
    assert not flag.is_set()
    tic = time.monotonic()
    assert flag.wait(0.05) is False
    assert 0.05 <= time.monotonic() - tic < 1.0
    child = mp.Process(target=_spin, args=(flag,))
    child.start()
    try:
        threading.Timer(0.3, flag.set).start()
        assert flag.wait(30)
        child.join(10)
        assert child.exitcode == 0  # the child saw it too
    finally:
        child.kill()
        child.join()


def _returns_within(call, timeout_s: float) -> bool:
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


def test_processes_killed_while_reading_the_flag_cannot_block_it():
    # multiprocessing.Event fails this in most runs: a reader killed inside is_set() leaves the
    # Event's lock held, and every later is_set() or set() waits forever (the runner hung so
    # after a SIGKILL of its tap).
    mp = multiprocessing.get_context("spawn")
    flag = Flag(mp)
    for _ in range(4):
        started = [Flag(mp) for _ in range(4)]
        readers = [mp.Process(target=_spin, args=(flag, s)) for s in started]
        for p in readers:
            p.start()
        assert all(s.wait(60) for s in started)
        time.sleep(0.1)  # all spinning on is_set()
        for p in readers:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
        assert _returns_within(flag.is_set, 2.0)
    assert _returns_within(flag.set, 2.0) and flag.is_set()
