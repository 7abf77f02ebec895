"""A live run with one process per stage and lossy links, recorded and replayed inline: the
replay reproduces the live outputs (digest) although the live stages dropped messages, because
the recording holds each stage's input trace. Kept apart: spawning the stages takes ~10 s."""

from __future__ import annotations

import json

import pytest
from test_record_replay import chain_config, save_fast_ista

from pipeline.__main__ import main
from pipeline.attach.record import recording_info

PROCESSING = ("detector", "cropper", "unmixer", "extractor", "tracker")


@pytest.mark.slow
def test_lossy_processes_run_replays_to_its_digest(tmp_path):
    config = chain_config(tmp_path, save_fast_ista(tmp_path), frames=30)
    rec = tmp_path / "live.mcap"
    # The source runs flat out into one-message queues: stages fall behind and drop.
    lossy = ["--set", "run.queue={policy: drop_oldest, hwm: 1, depth: 1}"]
    assert main(["run", str(config), "--mode", "processes", "--record", str(rec), "--report",
                 str(tmp_path / "live.json"), *lossy]) == 0
    live = json.loads((tmp_path / "live.json").read_text())
    assert live["mode"] == "processes" and live["frames"] == 30
    info = recording_info(rec)
    assert info.finished and info.topics["frames"] == 30  # the recorder's links are lossless
    assert sorted(info.traces) == sorted(PROCESSING)
    processed = sum(n for a, b in info.traces["detector"].to_dict()["frames"]
                    for n in [b - a + 1])
    assert processed == live["stages"]["detector"]["msgs_in"]
    assert main(["replay", str(rec), "--lossless", "--set", "run.mode=inline", "--report",
                 str(tmp_path / "r.json")]) == 0
    replay = json.loads((tmp_path / "r.json").read_text())
    assert replay["mode"] == "inline"
    assert replay["outputs_digest"] == live["outputs_digest"]
    assert replay["outputs"] == live["outputs"]
    for name in PROCESSING:  # every stage processed exactly what it processed live
        assert replay["stages"][name]["msgs_in"] == live["stages"][name]["msgs_in"], name
        lost = live["stages"][name]["dropped"] + live["stages"][name]["seq_gaps"]
        assert replay["stages"][name]["skipped"] >= (lost if name == "detector" else 0)
