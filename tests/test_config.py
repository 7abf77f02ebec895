"""Pipeline config: validation errors name the file, the key and the fix; --set overrides."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import stages
from pipeline.__main__ import main
from pipeline.config import STAGE_KINDS, ConfigError, effective, load, parse_override
from stages.base import Source, Stage


@dataclasses.dataclass(frozen=True)
class TickConfig:
    count: int = 5
    gain: float = 1.0


class Tick(Source):
    Config = TickConfig


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    factor: float = 2.0
    mode: str = "fast"

    def __post_init__(self):
        if self.mode not in ("fast", "exact"):
            raise ValueError(f"mode must be fast or exact, got {self.mode!r}")


class Scale(Stage):
    Config = ScaleConfig
    INPUTS = ("frames",)
    OUTPUT = "scaled"


class Sink(Stage):
    INPUTS = ("scaled",)


@pytest.fixture(autouse=True)
def fake_kinds(monkeypatch):
    for kind, cls in {"tick": Tick, "scale": Scale, "sink": Sink}.items():
        monkeypatch.setitem(STAGE_KINDS, kind, f"{__name__}:{cls.__name__}")


GOOD = """
run:
  frames: 10
stages:
  - name: source
    kind: tick
    config: {count: 3}
  - name: scaler
    kind: scale
    config: {factor: 3}
    queue: {policy: drop_oldest, depth: 4}
  - name: out
    kind: sink
"""


def write(tmp_path, text=GOOD, name="pipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_config_builds_plans(tmp_path):
    config, plans = load(write(tmp_path))
    assert config.run.frames == 10 and config.run.mode == "inline"
    assert [p.name for p in plans] == ["source", "scaler", "out"]
    assert plans[1].config == ScaleConfig(factor=3.0)
    assert plans[1].inputs == ("frames",) and plans[1].output == "scaled"
    assert plans[1].queue.policy == "drop_oldest" and plans[1].queue.depth == 4
    assert plans[2].queue.policy == "block"  # the run default
    assert isinstance(plans[1].build(), Scale)


def test_effective_config_has_every_default(tmp_path):
    data = effective(*load(write(tmp_path)))
    assert data["stages"][1]["config"] == {"factor": 3.0, "mode": "fast"}
    assert data["run"]["queue"] == {"policy": "block", "hwm": 4, "depth": 2}
    assert data["stages"][2]["inputs"] == ["scaled"]


@pytest.mark.parametrize("text, expected", [
    (GOOD + "extra: 1\n",
     r"extra: unknown key for PipelineConfig; valid keys: run, sensor, stages"),
    (GOOD.replace("frames: 10", "frams: 10"),
     r"run\.frams: unknown key for RunConfig; valid keys: mode"),
    (GOOD.replace("queue: {policy: drop_oldest, depth: 4}", "queue: {policy: drop_oldest, dep: 4}"),
     r"stages\[1\] \(scaler\)\.queue\.dep: unknown key for QueueConfig; valid keys: policy, hwm, "
     r"depth"),
    (GOOD.replace("config: {factor: 3}", "config: {factr: 3}"),
     r"stages\[1\] \(scaler\)\.config: factr: unknown key for ScaleConfig; "
     r"valid keys: factor, mode"),
    (GOOD.replace("config: {factor: 3}", "config: {factor: big}"),
     r"stages\[1\] \(scaler\)\.config: invalid ScaleConfig: factor: Input should be a valid "
     r"number"),
    (GOOD.replace("config: {factor: 3}", "config: {mode: slow}"),
     r"stages\[1\] \(scaler\)\.config: .*mode must be fast or exact"),
    (GOOD.replace("kind: scale", "kind: scael"),
     r"stages\[1\] \(scaler\)\.kind: unknown stage kind 'scael'; expected one of \["),
    (GOOD.replace("policy: drop_oldest", "policy: lossy"),
     r"queue\.policy: Input should be 'block' or 'drop_oldest'"),
    (GOOD.replace("name: out", "name: scaler"), r"duplicate stage name 'scaler'"),
    (GOOD.replace("kind: sink", "kind: sink\n    inputs: [blobs]"),
     r"input topic 'blobs' is not produced by an earlier stage"),
    (GOOD.replace("kind: sink", "kind: sink\n    output: scaled"),
     r"topic 'scaled' is already produced by stage 'scaler'"),
    ("stages: []\n", r"stages: Tuple should have at least 1 item"),
    ("- 1\n", r"must be a mapping"),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load(path)
    assert str(path) in str(info.value)


def test_source_must_come_first(tmp_path):
    text = GOOD.replace("  - name: source\n    kind: tick\n    config: {count: 3}\n", "")
    text += "  - name: source\n    kind: tick\n"
    with pytest.raises(ConfigError, match="first stage must be the only source"):
        load(write(tmp_path, text))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(write(tmp_path, "run: [\n"))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("run: {frames: 3}\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: the config file is not UTF-8 text"):
        load(latin1)


def test_set_overrides(tmp_path):
    config, plans = load(write(tmp_path), [
        "run.frames=7", "run.queue.hwm=9", "stages.scaler.factor=0.5",
        "stages.scaler.queue.policy=block", "stages.source.config.gain=2",
        "stages.out.inputs=[scaled]",
    ])
    assert config.run.frames == 7 and config.run.queue.hwm == 9
    assert plans[1].config.factor == 0.5 and plans[1].queue.policy == "block"
    assert plans[0].config == TickConfig(count=3, gain=2.0)


@pytest.mark.parametrize("override, expected", [
    ("run.frames", r"expected KEY\.SUB=VALUE"),
    ("=3", r"expected KEY\.SUB=VALUE"),
    ("run..frames=3", r"expected KEY\.SUB=VALUE"),
    ("stages.nobody.x=1", r"no stage named 'nobody'; stages: \['source', 'scaler', 'out'\]"),
    ("stages.scaler=1", r"use stages\.<stage name>\.<key>=VALUE"),
    ("run.frames.deep=1", r"'frames' is not a mapping"),
    ("run.frames=[1", r"value is not valid YAML"),
    ("stages.scaler.nope=1", r"nope: unknown key for ScaleConfig"),
    ("run.mode=sideways", r"run\.mode: Input should be 'inline' or 'processes'"),
])
def test_bad_overrides_are_named(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load(write(tmp_path), [override])


def test_override_values_are_yaml():
    assert parse_override("run.rate_hz=2.5") == (["run", "rate_hz"], 2.5)
    assert parse_override("run.report=null") == (["run", "report"], None)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=x=y") == (["a", "b"], "x=y")


def test_cli_validate_prints_the_effective_config(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path)), "--set", "run.frames=4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run"]["frames"] == 4
    assert printed["stages"][1]["config"] == {"factor": 3.0, "mode": "fast"}


def test_cli_validate_exits_2_naming_the_key(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("frames: 10", "frams: 10"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "run.frams: unknown key" in err and str(path) in err


REPO = Path(__file__).parents[1]


def test_every_registered_stage_imports():
    assert set(stages.STAGES) < set(STAGE_KINDS)
    for kind in STAGE_KINDS:
        if kind in ("tick", "scale", "sink"):  # this module's fakes
            continue
        cls = stages.stage_class(kind, STAGE_KINDS)
        assert issubclass(cls, Stage), kind
        assert dataclasses.is_dataclass(cls.Config), kind


def test_shipped_live_config_is_valid(capsys):
    assert main(["validate", str(REPO / "configs" / "live.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [s["kind"] for s in printed["stages"]][:3] == ["simulator", "detector", "cropper"]


def test_shipped_cluttered_config_is_the_live_chain_on_clutter(capsys):
    assert main(["validate", str(REPO / "configs" / "cluttered.yaml")]) == 0
    printed = {s["name"]: s for s in yaml.safe_load(capsys.readouterr().out)["stages"]}
    assert printed["source"]["config"]["scene"] == "builtin"
    assert printed["detector"]["config"]["local_window"] == 11
    unmixer = printed["unmixer"]["config"]
    assert unmixer["model"] == "fastunmix" and unmixer["weights"] is None  # the shipped weights
    assert printed["jsonl"]["config"]["path"].startswith("runs/cluttered/")


def test_cli_run_smoke(tmp_path):
    """The real CLI in a subprocess: simulator + detector for 3 frames, report written."""
    config = write(tmp_path, """
        stages:
          - {name: source, kind: simulator, config: {height: 64, width: 64, groups: 2}}
          - {name: detector, kind: detector}
    """)
    report_path = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(config), "--frames", "3",
         "--report", str(report_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "3 frames" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["frames"] == 3
    assert report["stages"]["detector"]["msgs_in"] == 3


@pytest.mark.parametrize("cls_path, values, expected", [
    ("stages.scene:SceneConfig", {"groups": "abc"}, r"groups: Input should be a valid integer"),
    ("pipeline.config:RunConfig", {"frames": True}, r"frames: expected a number, got true"),
    ("stages.detector:DetectorConfig", {"k": -8}, r"k \(the threshold.*must be > 0"),
    ("stages.detector:DetectorConfig", {"k": float("nan")}, r"k: NaN is not a valid value"),
    ("stages.scene:SceneConfig", {"psf_sigma": float("nan")}, r"psf_sigma: NaN is not a valid"),
    ("pipeline.config:RunConfig", {"queue": {"hwm": float("nan")}}, r"queue\.hwm: NaN is not"),
    ("pipeline.config:PipelineConfig",  # a stage's own options are named down to the key
     {"stages": [{"name": "s", "kind": "simulator", "config": {"psf_sigma": float("nan")}}]},
     r"stages\[0\]\.config\.psf_sigma: NaN is not a valid value"),
])
def test_types_first_then_ranges_and_no_nan(cls_path, values, expected):
    import importlib

    from models.config import build_config

    module, _, name = cls_path.partition(":")
    with pytest.raises(ConfigError, match=expected):
        build_config(getattr(importlib.import_module(module), name), values)
