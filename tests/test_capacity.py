"""The capacity check before the first frame (pipeline.run.capacity)."""

import json

import pytest

import pipeline.run.capacity as capacity
from pipeline.__main__ import main
from pipeline.config import load_raw, validate


def chain(tmp_path, rate="25.0", extra=""):
    path = tmp_path / "chain.yaml"
    path.write_text(f"""
run: {{frames: 6, mode: inline, rate_hz: {rate}{extra}}}
stages:
  - {{name: source, kind: simulator, config: {{seed: 3, height: 64, width: 64, groups: 3}}}}
  - {{name: detector, kind: detector}}
  - {{name: cropper, kind: cropper}}
  - {{name: unmixer, kind: unmixer, config: {{model: fastunmix}}}}
  - {{name: extractor, kind: extractor}}
""")
    return path


def test_times_the_unmixer_and_extractor_once_per_machine_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config, plans = validate(load_raw(chain(tmp_path)))
    result = capacity.check(plans, config.run)
    costs = result["ms_per_frame"]
    assert set(costs) == {"unmixer", "extractor"} and min(costs.values()) > 0
    assert result["windows_per_frame"] == 3 and result["load"]["windows_per_s"] == 75
    assert result["cores_needed"] == pytest.approx(sum(costs.values()) * 25 / 1e3)
    assert result["frames_per_s"]["unmixer"] == pytest.approx(1e3 / costs["unmixer"])
    assert result["line"].startswith("capacity here: unmixer (fastunmix) ")
    cached = json.loads(capacity.cache_path().read_text())
    assert sorted(cached.values()) == sorted(costs.values())

    def no_measuring(*args):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(capacity, "measure", no_measuring)
    assert capacity.check(plans, config.run)["ms_per_frame"] == costs


@pytest.mark.parametrize("rate, fits, words", [
    ("25.0", "fits", "they need 0.50 of 2 cores: it fits"),
    ("40.0", "tight", "they need 0.80 of 2 cores: tight: expect some dropped frames"),
    ("60.0", "no", "they need 1.20 of 2 cores: this chain cannot keep up"),  # > 1 core
    ("120.0", "no", "cannot keep up"),  # each stage alone holds 100 frames/s
    ("null", None, "the source is unpaced"),
])
def test_verdict_compares_each_stage_and_their_cores_with_the_load(tmp_path, monkeypatch, rate,
                                                                 fits, words):
    monkeypatch.setattr(capacity, "stage_costs", lambda plans, n: {"unmixer": 10.0,
                                                                    "extractor": 10.0})
    monkeypatch.setattr(capacity.os, "cpu_count", lambda: 2)
    config, plans = validate(load_raw(chain(tmp_path, rate)))
    result = capacity.check(plans, config.run)
    assert result["fits"] == fits and words in result["line"]


def test_the_cli_says_the_capacity_before_the_first_frame(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(capacity, "stage_costs", lambda plans, n: {"unmixer": 1.0,
                                                                    "extractor": 2.0})
    report = tmp_path / "r.json"
    assert main(["run", str(chain(tmp_path)), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("capacity here:") and "it fits" in out
    assert json.loads(report.read_text())["capacity"]["ms_per_frame"] == {"unmixer": 1.0,
                                                                           "extractor": 2.0}
    off = chain(tmp_path, extra=", capacity_check: false")
    assert main(["run", str(off)]) == 0
    assert "capacity here" not in capsys.readouterr().out
