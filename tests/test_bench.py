"""Pipeline benchmark: variant configs, the table and the goal check, and a CLI smoke run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.bench import Variant, chain_config, goal_check, summarise, table_rows
from pipeline.config import load_raw

REPO = Path(__file__).parents[1]
LIVE = REPO / "configs" / "live.yaml"


def test_a_variant_keeps_the_processing_stages_and_sets_groups_rate_and_policy():
    raw = load_raw(LIVE)
    before = json.dumps(raw, sort_keys=True)
    config, plans = chain_config(raw, Variant("processes", 24, paced=False), 50, 25.0, "live")
    assert [p.name for p in plans] == ["source", "detector", "cropper", "unmixer", "extractor",
                                       "tracker"]
    assert plans[0].config.groups == 24 and plans[0].config.frames == 0
    assert (config.run.mode, config.run.frames, config.run.rate_hz) == ("processes", 50, None)
    assert {p.queue.policy for p in plans} == {"block"}  # max: lossless, so nothing is lost
    config, plans = chain_config(raw, Variant("inline", 6, paced=True), 50, 25.0, "live")
    assert config.run.rate_hz == 25.0 and plans[0].config.groups == 6
    assert plans[1].queue.policy == raw["run"]["queue"]["policy"]  # paced: the live policy
    assert json.dumps(raw, sort_keys=True) == before  # the loaded config is left untouched


def test_a_model_variant_swaps_the_unmixer_model_and_its_weights():
    raw = load_raw(LIVE)
    raw["stages"][3].setdefault("config", {})["weights"] = "some/file.pt"
    _, plans = chain_config(raw, Variant("inline", 6, False, model="derefnet"), 50, 25.0,
                            "live")
    (unmixer,) = [p for p in plans if p.kind == "unmixer"]
    assert (unmixer.config.model, unmixer.config.weights) == ("derefnet", None)
    assert Variant("inline", 6, False, "derefnet").name == "derefnet/inline/6g/max"


def test_a_replicas_variant_runs_the_unmixer_in_that_many_processes():
    _, plans = chain_config(load_raw(LIVE), Variant("processes", 6, False, replicas=2), 50,
                            25.0, "live")
    assert {p.name: p.replicas for p in plans}["unmixer"] == 2
    assert Variant("processes", 6, True, "derefnet", 2).name == "derefnet/processesx2/6g/paced"


def _run(fps, p50, p99, lost=0):
    return {"fps": fps, "p50_ms": p50, "p99_ms": p99, "lost": lost, "dropped": lost,
            "seq_gaps": 0, "stage_p50_ms": {"unmixer": p50 / 2},
            "stage_p99_ms": {"unmixer": p99 / 2}}


def _results(top_fps, paced_fps, p99, lost=0):
    out = {}
    for paced, fps in ((False, top_fps), (True, paced_fps)):
        v = Variant("processes", 6, paced)
        runs = [_run(fps, 30.0, p99, lost), _run(fps - 2, 40.0, p99 + 50, 0),
                _run(fps + 5, 20.0, p99 - 10, 0)]
        out[v.name] = {"mode": v.mode, "groups": v.groups, **summarise(runs)}
    return out


def test_summaries_are_medians_over_repeats():
    summary = summarise([_run(30.0, 30.0, 100.0), _run(28.0, 40.0, 150.0),
                         _run(35.0, 20.0, 90.0, lost=2)])
    assert (summary["fps"], summary["p50_ms"], summary["p99_ms"]) == (30.0, 30.0, 100.0)
    assert summary["fps_range"] == [28.0, 35.0] and summary["lost"] == 2
    assert summary["stage_p99_ms"] == {"unmixer": 50.0} and summary["repeats"] == 3


def test_goal_needs_speed_the_rate_no_losses_and_a_low_p99():
    rows = table_rows(_results(40.0, 25.0, 120.0), rate=25.0)
    assert rows == [{"model": None, "mode": "processes", "replicas": 1, "groups": 6,
                     "max_fps": 40.0,
                     "paced_fps": 25.0,
                     "p50_ms": 30.0, "p99_ms": 120.0, "p99_from_middle_ms": 200.0, "lost": 0}]
    assert goal_check(rows, 25.0)["met"] == {"processes": True}
    for bad in (_results(20.0, 25.0, 120.0), _results(40.0, 20.0, 120.0),
                _results(40.0, 25.0, 250.0), _results(40.0, 25.0, 120.0, lost=1)):
        assert goal_check(table_rows(bad, 25.0), 25.0)["met"] == {"processes": False}


@pytest.fixture(scope="module")
def fast_unmixer(tmp_path_factory) -> Path:
    """ISTA capped at 30 iterations: a real unmixer that needs no training."""
    from models.classical.ista import IstaUnmixer
    from models.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "ista30.pt"
    save_weights(path, IstaUnmixer(max_iter=30), "ista", {"max_iter": 30}, {"note": "tests"})
    return path


def test_cli_bench_writes_the_table_and_machine_info(tmp_path, fast_unmixer):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    overrides = ["stages.source.height=64", "stages.source.width=64",
                 "stages.unmixer.model=ista", f"stages.unmixer.weights={fast_unmixer}"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "--frames", "12", "--repeats", "1",
         "--groups", "1", "--modes", "inline", "--rate", "200", "--out", str(out),
         *[arg for o in overrides for arg in ("--set", o)]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| inline | 1 |" in done.stdout
    doc = json.loads(out.read_text())
    (row,) = doc["table"]
    assert (row["mode"], row["groups"], row["lost"]) == ("inline", 1, 0)
    assert row["max_fps"] > 0 and row["paced_fps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert doc["settings"]["frame_size"] == [64, 64] and doc["settings"]["frames"] == 12
    assert doc["machine"]["cpus"] >= 1 and doc["machine"]["torch"]
    assert doc["command"].startswith("python -m pipeline bench --frames 12 --repeats 1")
    assert set(doc["results"]["inline/1g/max"]["stage_p50_ms"]) >= {"unmixer", "extractor"}


def test_cli_bench_rejects_a_bad_config_value(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "--set", "stages.detector.k=oops",
         "--out", str(tmp_path / "b.json")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "detector" in done.stderr
    assert not (tmp_path / "b.json").exists()
