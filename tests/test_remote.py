"""A chain started stage by stage (``python -m pipeline stage``) behind a conductor
(``python -m pipeline run`` with ``run.external``): the same outputs as one process, a killed
replica survived, a stage with another config refused; and across real network boundaries
(Linux network namespaces), where the kernel lets us make them. Real stages, real commands."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def chain(tmp_path: Path, port: int, frames: int = 40, rate_hz: float | None = None,
          hosts: dict[str, str | list[str]] | None = None, control: str | None = None,
          external: tuple[str, ...] = ("unmixer",), peer_timeout_s: float = 10.0) -> Path:
    """The standard chain (fastunmix, 2 unmixer replicas), lossless, over tcp; returns its
    config file."""
    hosts = hosts or {}
    stages = [
        {"name": "source", "kind": "simulator", "config": {"seed": 5}},
        {"name": "detector", "kind": "detector"},
        {"name": "cropper", "kind": "cropper"},
        {"name": "unmixer", "kind": "unmixer", "replicas": 2, "config": {"model": "fastunmix"}},
        {"name": "extractor", "kind": "extractor"},
        {"name": "tracker", "kind": "tracker"},
    ]
    for entry in stages:
        if entry["name"] in hosts:
            entry["host"] = hosts[entry["name"]]
    run = {"mode": "processes", "frames": frames, "rate_hz": rate_hz, "transport": "tcp",
           "tcp_base_port": port, "control": control or f"tcp://127.0.0.1:{port - 1}",
           "external": list(external), "capacity_check": False,
           "peer_timeout_s": peer_timeout_s, "ready_timeout_s": 60}
    path = tmp_path / f"chain-{port}.yaml"
    path.write_text(yaml.safe_dump({"run": run, "stages": stages}))
    return path


def command(*args: str, netns: str | None = None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, sys.executable, "-m", "pipeline", *args]


def start(*args: str, netns: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(*args, netns=netns), cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout_s: float = 120) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        proc.kill()
    return out


def inline_digest(config: Path, tmp_path: Path) -> str:
    from pipeline.__main__ import main

    report = tmp_path / "inline.json"
    assert main(["run", str(config), "--mode", "inline", "--report", str(report),
                 "--set", "run.external=[]", "--set", "run.chain_key=null"]) == 0
    return json.loads(report.read_text())["outputs_digest"]


def with_chain_key(config: Path, key: Path) -> Path:
    """``config`` with ``run.chain_key`` set (CURVE on every link and on control)."""
    text = yaml.safe_load(config.read_text())
    text["run"]["chain_key"] = str(key)
    config.write_text(yaml.safe_dump(text))
    return config


def test_a_chain_started_stage_by_stage_gives_the_outputs_of_one_process(tmp_path):
    from pipeline.wire.curve import create_keys

    # (with the chain key: CURVE on every link and on the control plane)
    config = with_chain_key(chain(tmp_path, 6811), create_keys(tmp_path / "k")["chain_secret"])
    report = tmp_path / "r.json"
    stage = start("stage", "unmixer", "--config", str(config))  # before its conductor: it waits
    time.sleep(1.0)
    conductor = start("run", str(config), "--report", str(report))
    out = finish(conductor)
    stage_out = finish(stage)
    assert conductor.returncode == 0, out
    assert stage.returncode == 0, stage_out
    result = json.loads(report.read_text())
    assert result["ok"] and result["frames_out"] == 40
    assert set(result["hosts"]) >= {"unmixer.0", "unmixer.1"}
    assert all(result["stages"][f"unmixer.{k}"]["msgs_in"] > 0 for k in (0, 1))
    assert result["outputs_digest"] == inline_digest(config, tmp_path)


class Conductor:
    """``python -m pipeline run CONFIG --report REPORT`` with its output read as it comes:
    :meth:`wait_running` returns once the stream has started; :meth:`finish` waits for the
    end and returns the output."""

    def __init__(self, config: Path, report: Path) -> None:
        self.proc = start("run", str(config), "--report", str(report))
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(
            target=lambda: [self.lines.put(x) for x in self.proc.stdout])
        self.reader.start()

    def wait_running(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while "stages in processes mode" not in self.lines.get(
                timeout=deadline - time.monotonic()):
            pass  # until every stage is ready and the stream starts

    def finish(self, timeout_s: float = 120) -> str:
        try:
            self.proc.wait(timeout_s)
        finally:
            self.proc.kill()
            self.reader.join(10)
            self.proc.stdout.close()
        return "".join(self.lines.queue)


def test_a_killed_external_replica_is_reported_lost_and_the_chain_goes_on(tmp_path):
    config = chain(tmp_path, 6831, frames=100, rate_hz=25, peer_timeout_s=2.0)
    report = tmp_path / "r.json"
    replicas = [start("stage", f"unmixer.{k}", "--config", str(config)) for k in (0, 1)]
    conductor = Conductor(config, report)
    try:
        conductor.wait_running()
        time.sleep(1.5)  # ~ 35 frames in
        replicas[1].send_signal(signal.SIGKILL)
    finally:
        out = conductor.finish()
        for proc in replicas:
            finish(proc, 30)
    assert conductor.proc.returncode == 0, out
    result = json.loads(report.read_text())
    assert result["ok"] and result["frames_in"] == 100
    assert list(result["replicas_lost"]) == ["unmixer.1"]
    assert "stopped answering" in result["replicas_lost"]["unmixer.1"]
    # what the killed replica held is lost, and counted as gaps of the merged stream
    assert result["frames_out"] + result["stages"]["extractor"]["seq_gaps"] == 100
    assert result["stages"]["unmixer.0"]["msgs_in"] > result["stages"]["unmixer.1"]["msgs_in"]


def test_a_lost_stage_that_is_started_again_rejoins_and_the_run_goes_on(tmp_path):
    config = chain(tmp_path, 6931, frames=100, rate_hz=25, peer_timeout_s=2.0,
                   external=("extractor",))
    text = yaml.safe_load(config.read_text())
    text["run"]["rejoin_timeout_s"] = 60
    config.write_text(yaml.safe_dump(text))
    report = tmp_path / "r.json"
    first = start("stage", "extractor", "--config", str(config))
    conductor = Conductor(config, report)
    second = None
    try:
        conductor.wait_running()
        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        finish(first, 10)
        time.sleep(3.0)  # lost (2 s of silence), the chain waiting on its links
        second = start("stage", "extractor", "--config", str(config))
    finally:
        out = conductor.finish()
        if second is not None:
            finish(second, 30)
    assert conductor.proc.returncode == 0, out
    assert "waiting up to 60 s for it to rejoin" in out
    result = json.loads(report.read_text())
    assert result["ok"] and result["rejoined"] == {"extractor": 1}
    assert result["frames_in"] == 100
    # the frames the extractor held when it was killed are gaps for the tracker, which ran on
    assert result["stages"]["tracker"]["seq_gaps"] > 0 and 0 < result["frames_out"] < 100


def test_a_stage_started_with_another_layout_is_refused(tmp_path):
    config = chain(tmp_path, 6851, external=("all",))  # the conductor starts nothing itself
    stage = start("stage", "unmixer", "--config", str(config), "--set", "run.queue.hwm=9")
    conductor = start("run", str(config))
    out = finish(conductor)
    finish(stage, 30)
    assert conductor.returncode == 1
    assert "was started with another chain layout" in out and "same config file" in out


def test_stage_command_errors_name_the_fix(tmp_path, capsys):
    from pipeline.__main__ import main

    config = chain(tmp_path, 6871)
    assert main(["stage", "unmixer.7", "--config", str(config)]) == 2
    assert "no stage or instance named 'unmixer.7'" in capsys.readouterr().err
    text = yaml.safe_load(config.read_text())
    text["run"]["control"] = None
    config.write_text(yaml.safe_dump(text))
    assert main(["stage", "unmixer", "--config", str(config)]) == 2
    assert "run.control" in capsys.readouterr().err
    assert main(["run", str(config)]) == 2  # the conductor too: external stages need it
    assert "run.control" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Across network namespaces: three "hosts" on one bridge, addresses only inside them.

SUBNET = "10.213.77"


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def hosts(count: int) -> Iterator[list[tuple[str, str]]]:
    """``count`` network namespaces joined by veth pairs to a bridge in a hub namespace;
    yields ``(namespace, address)`` per host. Skips the test where the kernel refuses."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    prefix = f"csist{os.getpid() % 100000}"
    hub, made = f"{prefix}-hub", []
    try:
        try:
            _ip("netns", "add", hub)
            made.append(hub)
            _ip("-n", hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", hub, "link", "set", "br0", "up")
            out = []
            for i in range(1, count + 1):
                ns = f"{prefix}-{i}"
                _ip("netns", "add", ns)
                made.append(ns)
                _ip("-n", hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
                _ip("-n", hub, "link", "set", f"v{i}", "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                out.append((ns, f"{SUBNET}.{i}"))
        except OSError as exc:
            pytest.skip(f"the kernel refused network namespaces here: {exc}")
        yield out
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.slow
def test_a_chain_split_over_three_network_namespaces_gives_the_outputs_of_one_process(
        tmp_path):
    with hosts(3) as machines:
        (ns1, a1), (ns2, a2), (ns3, a3) = machines
        config = chain(tmp_path, 7001, control=f"tcp://{a1}:7000",
                       hosts={"source": a1, "detector": a1, "cropper": a1, "unmixer": a2,
                              "extractor": a3, "tracker": a3},
                       external=("unmixer", "extractor", "tracker", "_digest"))
        report = tmp_path / "r.json"
        conductor = start("run", str(config), "--report", str(report), netns=ns1)
        replicas = start("stage", "unmixer", "--config", str(config), netns=ns2)
        tail = start("stage", "extractor,tracker,_digest", "--config", str(config), netns=ns3)
        out = finish(conductor)
        others = [finish(replicas, 30), finish(tail, 30)]
        assert conductor.returncode == 0, out
        assert replicas.returncode == 0 and tail.returncode == 0, others
    result = json.loads(report.read_text())
    assert result["ok"] and result["frames_out"] == 40
    assert all(result["stages"][f"unmixer.{k}"]["msgs_in"] > 0 for k in (0, 1))
    assert result["outputs_digest"] == inline_digest(config, tmp_path)


# ---------------------------------------------------------------------------------------------
# CURVE on the chain's own links and control plane (run.chain_key).


def test_a_link_with_the_chain_key_is_unreadable_without_it(tmp_path):
    import zmq

    from pipeline.wire.bus import Inlet, Link, Outlet
    from pipeline.wire.curve import ChainCurve, create_keys
    from stages.messages import Stats

    ours = create_keys(tmp_path / "ours")["chain_secret"]
    theirs = create_keys(tmp_path / "theirs")["chain_secret"]
    link = Link("stats", "tcp://127.0.0.1:6891", "block", 4, 2)
    ctx = zmq.Context()
    curves = [ChainCurve(ctx, ours)]
    sockets = []
    try:
        outlet = Outlet(ctx, [link], curve=curves[0])
        sockets.append(outlet)
        intruder = ctx.socket(zmq.PULL)  # no key at all
        intruder.connect(link.endpoint)
        sockets.append(intruder)
        time.sleep(0.3)
        assert not outlet.wait_ready(0.5)  # no handshake: not a peer
        other_ctx = zmq.Context()
        curves.append(ChainCurve(other_ctx, theirs))  # another chain's key
        stranger = Inlet(other_ctx, [link], curve=curves[1])
        sockets.append(stranger)
        assert not outlet.wait_ready(0.5)
        member = Inlet(ctx, [link], curve=curves[0])
        sockets.append(member)
        assert outlet.wait_ready(5.0)
        assert outlet.send(Stats(seq=0, t_source_ns=0, stage="x"))
        got = member.recv(2000)
        assert got is not None and got[1].stage == "x"
        assert stranger.recv(300) is None and not intruder.poll(300)
    finally:
        for sock in reversed(sockets):
            sock.close()
        for curve in curves:
            curve.stop()
        ctx.destroy(linger=0)
        if len(curves) > 1:
            other_ctx.destroy(linger=0)


def test_a_stage_without_the_chain_key_is_not_admitted(tmp_path):
    from pipeline.wire.curve import create_keys

    ours = create_keys(tmp_path / "ours")["chain_secret"]
    theirs = create_keys(tmp_path / "theirs")["chain_secret"]
    config = with_chain_key(chain(tmp_path, 6911), ours)
    quick = ("--set", "run.ready_timeout_s=4")
    stage = start("stage", "unmixer", "--config", str(config), "--set",
                  f"run.chain_key={theirs}", *quick)
    out = finish(start("run", str(config), *quick))
    finish(stage, 60)
    assert "never contacted the conductor" in out and "unmixer.0" in out


def test_replicabench_runs_the_unmixer_behind_replicas_and_counts_every_message():
    from pipeline.replicabench import WARM_UP, one_run

    result = one_run("fastunmix", 2, frames=WARM_UP + 6, groups=2)
    assert result["messages"] == WARM_UP + 6  # lossless: every message through
    assert result["rate"] > 0 and result["unmixer_p50_ms"] > 0
