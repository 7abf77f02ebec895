"""Rate-limited warnings (stages.ratelimit): a flood is summarised, never dropped."""

import logging
import time

from stages.ratelimit import LimitedWarnings


def test_a_flood_is_summarised_with_its_count_and_start_and_nothing_is_lost(caplog):
    now = [0.0]
    wall = time.mktime((2026, 11, 30, 12, 1, 3, 0, 0, -1))
    limiter = LimitedWarnings(logging.getLogger("flood"), burst=3, interval_s=10.0,
                              clock=lambda: now[0], wall=lambda: wall + now[0])
    with caplog.at_level(logging.WARNING, logger="flood"):
        for i in range(24):  # 24 decode errors within one second
            now[0] = i / 24
            limiter.warn("decode", f"bad message {i}")
        limiter.warn("schema", "wrong schema 0")  # another kind has its own burst
        assert [r.getMessage() for r in caplog.records] == [
            "bad message 0", "bad message 1", "bad message 2", "wrong schema 0"]
        now[0] = 11.0
        limiter.warn("decode", "bad message 24")  # past the interval: the summary comes out
        limiter.warn("decode", "bad message 25")
        limiter.flush()  # the socket closes: what is untold is told
    lines = [r.getMessage() for r in caplog.records][4:]
    assert lines == ["... and 22 more since 12:01:03 (last: bad message 24)",
                     "... and 1 more since 12:01:14 (last: bad message 25)"]
