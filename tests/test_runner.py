"""Runner: the same fake chain in one process and one process per stage; failures and signals.

The fake stages live at module level so that spawned worker processes can import them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, QueueConfig, RunConfig, StagePlan
from pipeline.run.report import write_report
from pipeline.run.runner import latency_stage, run, run_inline, run_processes
from pipeline.run.stage_calls import pace
from stages.base import Source, Stage
from stages.messages import Frame, Point, Points

#: Calls of stop() seen in this process (inline tests only).
STOPPED: list[str] = []


@dataclasses.dataclass(frozen=True)
class CounterConfig:
    n: int = 10


class Counter(Source):
    """Frames 0..n-1 whose single pixel holds the seq."""

    Config = CounterConfig

    def __iter__(self):
        for i in range(self.config.n):
            yield Frame(seq=i, t_source_ns=i * 40_000_000, image=np.full((1, 1), i, np.float32))


@dataclasses.dataclass(frozen=True)
class DoublerConfig:
    die_at: int = -1
    raise_at: int = -1
    user_error_at: int = -1  # raises a ConfigError (an error that names its own fix)


class Doubler(Stage):
    """Frame -> Points with one point at row = 2 * pixel; can die or raise on request."""

    Config = DoublerConfig
    INPUTS = ("frames",)
    OUTPUT = "points"

    def process(self, msg):
        if msg.seq == self.config.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if msg.seq == self.config.raise_at:
            raise ValueError(f"bad frame {msg.seq}")
        if msg.seq == self.config.user_error_at:
            raise ConfigError(f"frame {msg.seq}: set doubler.fix=true")
        value = float(msg.image[0, 0]) * 2
        yield Points(seq=msg.seq, t_source_ns=msg.t_source_ns,
                     points=[Point(row=value, col=0.0, score=1.0)])

    def stop(self):
        STOPPED.append("doubler")


class OutsideFed(Doubler):
    """A Doubler that also reads an outside input, whose 3 broken messages it counts."""

    def input_counters(self):
        return {"decode_errors": 3}


class Holder(Stage):
    """Holds every message until flush (a stage with buffered state)."""

    INPUTS = ("points",)
    OUTPUT = "held"

    def __init__(self, config=None):
        super().__init__(config)
        self.held = []

    def process(self, msg):
        self.held.append(msg)
        return ()

    def flush(self):
        held, self.held = self.held, []
        return held


class Collector(Stage):
    """Sink: records what it saw; its summary() goes into the report."""

    INPUTS = ("points",)

    def __init__(self, config=None):
        super().__init__(config)
        self.seen = []

    def process(self, msg):
        self.seen.append((type(msg).__name__, msg.seq, msg.points[0].row if msg.points else None,
                          sorted(msg.stamps)))
        return ()

    def summary(self):
        return {"seqs": [s[1] for s in self.seen], "values": [s[2] for s in self.seen],
                "stamps": self.seen[-1][3] if self.seen else []}


class Joiner(Collector):
    """Sink reading two topics: records the order of arrival."""

    INPUTS = ("frames", "points")

    def process(self, msg):
        self.seen.append((type(msg).__name__, msg.seq, None, sorted(msg.stamps)))
        return ()

    def summary(self):
        return {"order": [(s[0], s[1]) for s in self.seen]}


LOSSLESS = QueueConfig()


def plan(name, cls, config=None, inputs=None, output="default", queue=LOSSLESS):
    return StagePlan(name, name, cls, config if config is not None else cls.Config(),
                     cls.INPUTS if inputs is None else inputs,
                     cls.OUTPUT if output == "default" else output, queue)


def chain_plans(n=10, doubler=None, sink=Collector):
    return [plan("source", Counter, CounterConfig(n=n)),
            plan("doubler", Doubler, doubler or DoublerConfig()),
            plan("sink", sink)]


# ---------------------------------------------------------------------------------------------
# Inline.


def test_inline_chain_runs_every_frame_with_stamps():
    report = run_inline(chain_plans(n=12), RunConfig())
    assert report["ok"] and report["frames"] == 12 and not report["interrupted"]
    sink = report["scores"]["sink"]
    assert sink["seqs"] == list(range(12))
    assert sink["values"] == [2.0 * i for i in range(12)]
    assert sink["stamps"] == ["doubler.in", "doubler.out", "source.out"]
    stages = report["stages"]
    assert (stages["source"]["msgs_out"], stages["doubler"]["msgs_in"],
            stages["doubler"]["msgs_out"], stages["sink"]["msgs_in"]) == (12, 12, 12, 12)
    assert report["end_to_end"]["at"] == "doubler"
    assert 0 <= report["end_to_end"]["p50_ms"] <= report["end_to_end"]["p99_ms"]


def test_latency_is_measured_at_the_deepest_publishing_stage():
    full = [*chain_plans()[:2], plan("holder", Holder), plan("sink", Collector),
            plan("late", Collector, inputs=("held",))]
    assert latency_stage(full) == "holder"  # depth 2 and publishes; the sinks only consume
    assert latency_stage([chain_plans()[0], plan("join", Joiner, inputs=("frames",))]) == "join"
    assert latency_stage(chain_plans()[:1]) is None


def test_inline_delivers_breadth_first():
    plans = [plan("source", Counter, CounterConfig(n=3)), plan("doubler", Doubler),
             plan("join", Joiner)]
    order = run_inline(plans, RunConfig())["scores"]["join"]["order"]
    assert order == [("Frame", 0), ("Points", 0), ("Frame", 1), ("Points", 1),
                     ("Frame", 2), ("Points", 2)]


def test_inline_flush_drains_buffered_messages():
    plans = [*chain_plans(n=5)[:2], plan("holder", Holder),
             plan("sink", Collector, inputs=("held",))]
    report = run_inline(plans, RunConfig())
    assert report["scores"]["sink"]["seqs"] == [0, 1, 2, 3, 4]
    assert report["stages"]["holder"]["msgs_out"] == 5


def test_inline_frames_limit_and_stop_request():
    assert run_inline(chain_plans(n=100), RunConfig(frames=7))["frames"] == 7
    calls = iter(range(1000))
    report = run_inline(chain_plans(n=100), RunConfig(), should_stop=lambda: next(calls) >= 4)
    assert report["interrupted"] and report["frames"] == 4 and report["ok"]
    assert report["scores"]["sink"]["seqs"] == [0, 1, 2, 3]  # what was produced is drained


def test_inline_stage_error_is_reported_and_stops_the_stages():
    STOPPED.clear()
    report = run_inline(chain_plans(n=10, doubler=DoublerConfig(raise_at=3)), RunConfig())
    assert not report["ok"]
    assert report["error"] == "stage 'doubler' failed: ValueError: bad frame 3"
    assert STOPPED == ["doubler"]


class BrokenAtStart(Collector):
    """A sink whose start() fails, like an unmixer with a broken weights file."""

    def start(self):
        raise ConfigError("weights.json: not a readable JSON metadata file")


def test_a_start_up_failure_is_blamed_on_its_stage_not_on_the_peers_that_stop(caplog):
    for _ in range(2):  # the blame used to depend on which report the runner read first
        caplog.clear()
        plans = [plan("source", Counter, CounterConfig(n=50)),
                 plan("doubler", Doubler),
                 plan("broken", BrokenAtStart, inputs=("points",), output=None)]
        with caplog.at_level(logging.INFO):
            report = run_processes(plans, RunConfig(mode="processes"))
        assert report["error"] == ("stage 'broken' failed: ConfigError: weights.json: not a "
                                   "readable JSON metadata file")
        assert "did not connect" not in caplog.text and "exited" not in report["error"]


@pytest.mark.parametrize("mode", ["inline", "processes"])
def test_a_user_error_is_one_line_and_a_defect_keeps_its_traceback(mode, caplog):
    runner = run_inline if mode == "inline" else run_processes
    logged = {}
    for kind, config in (("user", DoublerConfig(user_error_at=2)),
                         ("defect", DoublerConfig(raise_at=2))):
        caplog.clear()
        plans = [plan("source", Counter, CounterConfig(n=20)),
                 plan("doubler", Doubler, config, output=None)]
        with caplog.at_level(logging.INFO):
            report = runner(plans, RunConfig(mode=mode))
        assert not report["ok"]
        logged[kind] = "Traceback (most recent call last)" in caplog.text or any(
            r.exc_info for r in caplog.records)
        if kind == "user":
            assert report["error"] == ("stage 'doubler' failed: ConfigError: frame 2: set "
                                       "doubler.fix=true")
    assert logged == {"user": False, "defect": True}


def test_report_is_strict_json(tmp_path):
    report = run_inline(chain_plans(n=3), RunConfig())
    path = write_report(report, tmp_path / "r" / "report.json")
    data = json.loads(path.read_text())
    assert data["stages"]["source"]["age_p50_ms"] is None  # NaN written as null
    assert {"frames", "fps", "stages", "end_to_end", "scores"} <= set(data)
    assert set(data["stages"]["doubler"]) >= {"p50_ms", "p99_ms", "msgs_in", "msgs_out",
                                              "dropped", "decode_errors", "seq_gaps"}


# ---------------------------------------------------------------------------------------------
# One process per stage.


def test_processes_chain_end_to_end():
    # doubler reads over a lossless PUSH/PULL link, the sink over a live XPUB/SUB link whose
    # queue is deep enough to drop nothing: both paths, handshake and EndOfStream included.
    plans = chain_plans(n=30)
    plans[2] = plan("sink", Collector, queue=QueueConfig(policy="drop_oldest", hwm=64, depth=64))
    report = run_processes(plans, RunConfig(mode="processes"))
    assert report["ok"], report["error"]
    assert report["frames"] == 30
    sink = report["scores"]["sink"]
    assert sink["seqs"] == list(range(30))
    assert sink["values"] == [2.0 * i for i in range(30)]
    assert sink["stamps"] == ["doubler.in", "doubler.out", "source.out"]
    for name in ("doubler", "sink"):
        s = report["stages"][name]
        assert (s["msgs_in"], s["dropped"], s["seq_gaps"], s["decode_errors"]) == (30, 0, 0, 0)
    assert not math.isnan(report["end_to_end"]["p99_ms"])


@pytest.mark.parametrize("runner", [run_inline, run_processes])
def test_a_stage_s_own_input_counters_join_its_row_of_the_report(runner):
    plans = chain_plans(n=5)
    plans[1] = plan("doubler", OutsideFed, DoublerConfig())
    report = runner(plans, RunConfig())
    assert report["ok"]
    assert report["stages"]["doubler"]["decode_errors"] == 3
    assert report["stages"]["sink"]["decode_errors"] == 0


def test_processes_dead_stage_fails_fast():
    t0 = time.monotonic()
    report = run_processes(chain_plans(n=1000, doubler=DoublerConfig(die_at=5)),
                           RunConfig(mode="processes", rate_hz=200))
    assert time.monotonic() - t0 < 15
    assert not report["ok"]
    assert "stage 'doubler'" in report["error"] and "killed by signal 9" in report["error"]
    # the stages that were stopped sent their exact statistics: real times, not 0 s
    assert report["wall_s"] > 0 and report["fps"] > 0
    assert report["stages"]["source"]["msgs_out"] >= 6  # seqs 0..5 reached the doubler


def test_processes_stage_exception_is_reported():
    plans = [plan("source", Counter, CounterConfig(n=50)),
             plan("doubler", Doubler, DoublerConfig(raise_at=2), output=None)]
    report = run_processes(plans, RunConfig(mode="processes"))
    assert not report["ok"]
    assert report["error"] == "stage 'doubler' failed: ValueError: bad frame 2"


SIGTERM_SCRIPT = """
import json, logging, sys
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.INFO)
from test_runner import chain_plans
from pipeline.config import RunConfig
from pipeline.run.runner import run
print("imports done", file=sys.stderr, flush=True)
report = run(chain_plans(n=100000), RunConfig(mode={mode!r}, rate_hz=100))
print(json.dumps({{"ok": report["ok"], "interrupted": report["interrupted"],
                  "frames": report["frames"], "seen": len(report["scores"]["sink"]["seqs"])}}))
sys.exit(0 if report["ok"] else 1)
"""


@pytest.mark.parametrize("mode, started", [("processes", "stages in processes mode"),
                                           ("inline", "imports done")])
def test_sigterm_stops_the_source_and_drains(mode, started):
    script = SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), mode=mode)
    repo = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
        deadline = time.monotonic() + 30
        # wait for the script to be up (the workers, in processes mode), then let frames flow
        while time.monotonic() < deadline:
            if started in lines.get(timeout=max(0.1, deadline - time.monotonic())):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"] and result["interrupted"]
    assert 0 < result["frames"] < 100000
    assert result["seen"] == result["frames"]  # lossless: every produced frame was drained


def test_a_second_sigterm_aborts_at_once_with_exit_code_130(tmp_path):
    config = tmp_path / "chain.yaml"
    config.write_text("""
run: {mode: processes, rate_hz: 50}
stages:
  # large frames: the detector lags behind the source, so the drain takes a while (the
  # second signal must land in it; a chain of small frames drains in milliseconds)
  - {name: source, kind: simulator, config: {seed: 1, height: 2048, width: 2048, groups: 1}}
  - {name: detector, kind: detector}
""")
    repo = str(Path(__file__).parents[1])
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo,
                            env={**os.environ, "PYTHONPATH": repo})
    try:
        for line in proc.stderr:  # until the chain runs
            if "stages in processes mode" in line:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)  # two signals sent at once would arrive as one
        proc.send_signal(signal.SIGTERM)  # before the chain has drained
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 130 and elapsed < 10
    assert "aborted" in err.splitlines()


def test_run_dispatches_on_mode():
    report = run(chain_plans(n=4), RunConfig(mode="inline"))
    assert report["mode"] == "inline" and report["frames"] == 4


def test_pace_spaces_source_messages():
    assert [next(pace(None)) for _ in range(3)] == [0.0, 0.0, 0.0]
    ticks = pace(50.0)
    assert next(ticks) == 0.0
    assert 0.0 < next(ticks) <= 0.02


def test_the_report_says_how_many_frames_got_through_and_where_the_rest_went():
    from pipeline.__main__ import through_line
    from pipeline.run.report import build_report

    def stage(out, dropped=0, t=(0, 4_000_000_000)):
        return {"msgs_in": out + dropped, "msgs_out": out, "dropped": dropped,
                "first_ns": t[0], "last_ns": t[1], "age_p50_ms": 1.0, "age_p99_ms": 2.0}

    stages = {"source": stage(100), "unmixer": stage(62, 36), "extractor": stage(34, 28),
              "tracker": stage(34), "scoring": stage(0)}
    summaries = {"scoring": {"cso_map": {"mode": "points", "mAP": 0.875}}}
    report = build_report(mode="processes", source="source", stages=stages,
                          latency_at="tracker", summaries=summaries, error=None,
                          interrupted=False)
    assert (report["frames_in"], report["frames_out"]) == (100, 34)
    assert report["drop_rate"] == pytest.approx(0.66)
    assert report["dropped_at"] == {"unmixer": 36, "extractor": 28}
    assert report["cso_map"] == 0.875
    assert report["fps"] == pytest.approx(25.0) and report["fps_out"] == pytest.approx(8.5)
    assert through_line(report) == ("34 of 100 frames through (36 dropped at unmixer, 28 "
                                    "dropped at extractor) in 4.00 s: 25.0 frames/s in, 8.5 out")


def test_temporary_folders_of_killed_runs_are_swept(tmp_path):
    from pipeline.run.runner import sweep_stale_temp_dirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists (a killed runner's)
    stale = tmp_path / f"csist-{dead.pid}-abcd"
    mine = tmp_path / f"csist-{os.getpid()}-efgh"  # a live runner's
    other = tmp_path / "csist-notapid"
    for folder in (stale, mine, other):
        folder.mkdir()
        (folder / "sock").write_text("")
    assert sweep_stale_temp_dirs(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and other.exists()
