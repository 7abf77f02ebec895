"""Link benchmark: one-way latency over a real link to a receiver process, and the bytes each
link of the chain carries per frame."""

from __future__ import annotations

import sys

from pipeline.linkbench import _send, _summary, bytes_per_frame, windows_message
from pipeline.wire.codec import encode


def test_one_way_latency_over_ipc_is_measured_in_a_receiver_process(tmp_path):
    lags = _send(f"ipc://{tmp_path}/link", 6, count=20, interval_s=0.002,
                 receiver=[sys.executable, "-m", "pipeline.linkbench"])
    row = _summary(lags, 6)
    assert row["received"] == 20 and 0 < row["p50_ms"] <= row["p99_ms"] < 1000
    assert row["bytes"] == sum(len(bytes(f)) for f in encode(windows_message(6)))


def test_bytes_per_frame_grow_with_the_groups_on_the_per_group_links():
    sizes = bytes_per_frame((1, 4), frames=4)
    one, four = sizes["1_groups"], sizes["4_groups"]
    assert set(one) == {"frames", "blobs", "windows", "maps", "points", "tracks"}
    for topic in ("windows", "maps"):  # one window (patches, map) per group
        assert 3 * one[topic] < four[topic] < 5 * one[topic]
    assert abs(four["frames"] - one["frames"]) < 0.1 * one["frames"]  # the image dominates
