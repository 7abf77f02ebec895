"""Several sensors in one chain: the simulator's ``sensors: N``, per-sensor state in the
cropper, unmixer, tracker and scoring, and the report's per-sensor figures.

The chain test is the proof that the state is really per sensor: each sensor of a
two-sensor run gives exactly the points, tracks and scores of that sensor's scene run alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.replay.playback import looped
from stages.messages import Frame
from stages.source import SimulatorConfig, SimulatorSource, sensor_seed

SCENE = {"seed": 11, "height": 96, "width": 96, "groups": 3}
FRAMES = 16  # per sensor


def simulate(frames: int, **options) -> list[Frame]:
    source = SimulatorSource(SimulatorConfig(**{**SCENE, "frames": frames, **options}))
    return list(source)


def test_the_simulator_sends_its_sensors_round_robin_each_its_own_scene():
    both = simulate(3, sensors=2)
    assert [(f.seq, f.sensor, f.sensor_seq) for f in both] == [
        (0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1), (4, 0, 2), (5, 1, 2)]
    assert [f.t_source_ns for f in both] == [0, 0, 40_000_000, 40_000_000, 80_000_000,
                                             80_000_000]  # each sensor's clock runs at fps
    alone = {0: simulate(3), 1: simulate(3, seed=sensor_seed(SCENE["seed"], 1))}
    for frame in both:
        same = alone[frame.sensor][frame.sensor_seq]
        assert np.array_equal(frame.image, same.image) and frame.truth == same.truth
    assert not np.array_equal(both[0].image, both[1].image)  # two different scenes


def test_sensor_seeds_are_distinct_and_sensor_0_keeps_the_seed():
    assert sensor_seed(11, 0) == 11
    assert len({sensor_seed(11, k) for k in range(8)} | {sensor_seed(12, 1)}) == 9


def test_sensors_must_be_positive():
    with pytest.raises(ValueError, match="sensors must be >= 1"):
        SimulatorConfig(sensors=0)


def run_chain(folder: Path, messages: int, **source) -> tuple[dict, list[dict]]:
    """An inline run of the standard chain with a scoring and a jsonl sink: (report, jsonl
    records)."""
    folder.mkdir()
    options = json.dumps({**SCENE, **source})
    config = folder / "chain.yaml"
    config.write_text(f"""
run: {{frames: {messages}, mode: inline, rate_hz: null}}
stages:
  - {{name: source, kind: simulator, config: {options}}}
  - {{name: detector, kind: detector}}
  - {{name: cropper, kind: cropper}}
  - {{name: unmixer, kind: unmixer, config: {{model: fastunmix, threads: 1}}}}
  - {{name: extractor, kind: extractor}}
  - {{name: tracker, kind: tracker}}
  - {{name: scoring, kind: scoring}}
  - {{name: jsonl, kind: jsonl, config: {{path: {folder}/out.jsonl}}}}
""")
    assert main(["run", str(config), "--report", str(folder / "report.json")]) == 0
    report = json.loads((folder / "report.json").read_text())
    records = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    return report, records


def own_frames(records: list[dict]) -> list[dict]:
    """A sensor's records without the chain-wide seq and sensor: what a lone run gives."""
    return [{k: v for k, v in r.items() if k not in ("seq", "sensor")} for r in records]


def test_each_sensor_of_a_two_sensor_chain_gives_what_it_gives_alone(tmp_path):
    report, records = run_chain(tmp_path / "two", 2 * FRAMES, sensors=2)
    assert [(r["seq"], r["sensor"], r["sensor_seq"]) for r in records] == [
        (s, s % 2, s // 2) for s in range(2 * FRAMES)]
    scores = report["scores"]["scoring"]
    assert sorted(scores["per_sensor"]) == ["0", "1"]
    assert set(report["per_sensor"]) == {"0", "1"}
    assert scores["frames"] == 2 * FRAMES
    for sensor in (0, 1):
        seed = sensor_seed(SCENE["seed"], sensor)
        alone, alone_records = run_chain(tmp_path / f"alone{sensor}", FRAMES, seed=seed)
        mine = [r for r in records if r["sensor"] == sensor]
        assert sum(len(r["tracks"]) for r in mine) > 0  # the tracker confirmed something
        assert own_frames(mine) == own_frames(alone_records)
        lone_scores = {k: v for k, v in alone["scores"]["scoring"].items()
                       if k != "frames_without_truth"}
        assert scores["per_sensor"][str(sensor)] == lone_scores
        assert report["per_sensor"][str(sensor)] == {
            "frames": FRAMES, "cso_map": alone["cso_map"],
            "cso_map_end_to_end": alone["cso_map_end_to_end"]}
        assert alone["per_sensor"] is None  # one sensor: no per-sensor section
    assert "per_sensor" not in alone["scores"]["scoring"]


def test_a_looped_replay_shifts_each_sensors_frame_count():
    frames = simulate(2, sensors=2, height=32, width=32, groups=1)
    again = [f for f, _ in zip(looped(lambda: iter(frames), loop=True), range(8),
                               strict=False)]
    assert [(f.seq, f.sensor, f.sensor_seq) for f in again] == [
        (s, s % 2, s // 2) for s in range(8)]
