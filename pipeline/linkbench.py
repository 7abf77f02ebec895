"""Link benchmark: ``python -m pipeline linkbench [--out benchmarks/scale.json]``.

What a message costs on the wire between two stage processes, per transport:

- **latency**: one-way time of a ``Windows`` message of 6 windows (and of 24) from a PUSH in
  this process to a PULL in a receiver process, over ``ipc``, ``tcp`` on the loopback, and
  ``tcp`` across a network-namespace boundary (a veth pair between this namespace and a
  namespace the benchmark creates: what two hosts on a LAN look like to the kernel, minus the
  wire). The send time travels in the message's ``t_source_ns``; both ends read the same
  clock. Messages go one at a time every ``--interval-ms``, so queueing does not count.
  The transports take turns: ``--rounds`` rounds, each sending ``--count / --rounds``
  messages of each size over each transport, so a noisy neighbour on the shared host
  weighs on all of them alike (one transport after the other, ipc once measured slower than
  tcp). Reported: p50 and p99 (ms) of all rounds' messages per transport and size, and each
  transport's p50 minus ipc's.
  The namespace part needs root (``ip netns``); without it the row says why it is missing.
- **bytes per frame per link**: the encoded size of each topic's message of one frame, at 6
  and 24 groups, from a short inline run of ``configs/live.yaml`` (what each link of the
  chain carries per frame).

Results go to ``--out`` under the key ``links`` (other keys of an existing file are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from models.machine import cpu_model
from pipeline.config import QueueConfig, StagePlan, load
from pipeline.run.report import write_section
from pipeline.run.runner import run_inline
from pipeline.wire.codec import decode, encode
from stages.base import TopicSink
from stages.messages import WindowInfo, Windows

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "scale.json"
#: Addresses of the veth pair (this namespace, the benchmark's namespace).
VETH_NET = ("10.231.7.1", "10.231.7.2")
NAMESPACE = "csist-linkbench"
PORT = 47381


def windows_message(n: int, seq: int = 0) -> Windows:
    """A ``Windows`` message of ``n`` windows with random patches (the chain's unmixer input)."""
    rng = np.random.default_rng(seq)
    infos = tuple(WindowInfo(blob_id=i, origin_row=10 * i, origin_col=7, frame_index=9)
                  for i in range(n))
    patches = rng.uniform(0, 120, size=(n, 5, 11, 11)).astype(np.float32)
    return Windows(seq=seq, t_source_ns=0, windows=infos, patches=patches)


def receive(endpoint: str, count: int, timeout_s: float) -> list[float]:
    """Receiver side: bind a PULL on ``endpoint``, take ``count`` messages, return their
    one-way latencies (ms) from their ``t_source_ns``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    print("ready", flush=True)
    lags = []
    try:
        while len(lags) < count:
            if not sock.poll(int(timeout_s * 1000)):
                break
            frames = sock.recv_multipart()
            now = time.time_ns()
            lags.append((now - decode(frames).t_source_ns) / 1e6)
    finally:
        sock.close()
        ctx.term()
    return lags


def _send(endpoint: str, n: int, count: int, interval_s: float,
          receiver: list[str]) -> list[float]:
    """Start ``receiver`` (a command binding ``endpoint``), send it ``count`` messages of
    ``n`` windows, one every ``interval_s``; returns the latencies it measured (ms)."""
    proc = subprocess.Popen([*receiver, "--receive", endpoint, "--count", str(count)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(endpoint)
        msg = windows_message(n)
        time.sleep(0.3)  # the connection is up before the first timed message
        for seq in range(count):
            stamped = Windows(seq=seq, t_source_ns=time.time_ns(), windows=msg.windows,
                              patches=msg.patches)
            sock.send_multipart(encode(stamped))
            time.sleep(interval_s)
        sock.close()
        ctx.term()
        return json.loads(proc.communicate(timeout=60)[0].splitlines()[-1])
    finally:
        proc.kill()


def _summary(lags: list[float], n: int) -> dict[str, Any]:
    return {"received": len(lags), "p50_ms": statistics.median(lags) if lags else None,
            "p99_ms": float(np.percentile(lags, 99)) if lags else None,
            "bytes": sum(len(bytes(f)) for f in encode(windows_message(n)))}


def _netns_up() -> str | None:
    """Create the benchmark's namespace and a veth pair to it; None when done, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command"
    here, there = VETH_NET
    steps = [
        ["ip", "netns", "add", NAMESPACE],
        ["ip", "link", "add", "csist-veth0", "type", "veth", "peer", "name", "csist-veth1"],
        ["ip", "link", "set", "csist-veth1", "netns", NAMESPACE],
        ["ip", "addr", "add", f"{here}/24", "dev", "csist-veth0"],
        ["ip", "link", "set", "csist-veth0", "up"],
        ["ip", "netns", "exec", NAMESPACE, "ip", "addr", "add", f"{there}/24", "dev",
         "csist-veth1"],
        ["ip", "netns", "exec", NAMESPACE, "ip", "link", "set", "csist-veth1", "up"],
        ["ip", "netns", "exec", NAMESPACE, "ip", "link", "set", "lo", "up"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            _netns_down()
            return f"`{' '.join(step)}` failed: {done.stderr.strip()}"
    return None


def _netns_down() -> None:
    subprocess.run(["ip", "link", "del", "csist-veth0"], capture_output=True)
    subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)


def latencies(sizes: tuple[int, ...], count: int, interval_s: float,
              rounds: int) -> dict[str, Any]:
    """One-way latency per transport, the transports taking turns (see the module
    docstring)."""
    me = [sys.executable, "-m", "pipeline.linkbench"]
    why = _netns_up()
    out: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="csist-linkbench-") as tmp:
            transports = {"ipc": (f"ipc://{tmp}/link", me),
                          "tcp_loopback": (f"tcp://127.0.0.1:{PORT}", me)}
            if why is None:
                transports["tcp_across_netns"] = (f"tcp://{VETH_NET[1]}:{PORT}",
                                                  ["ip", "netns", "exec", NAMESPACE, *me])
            lags = {(t, n): [] for t in transports for n in sizes}
            for _ in range(rounds):
                for (transport, n), got in lags.items():
                    endpoint, receiver = transports[transport]
                    got += _send(endpoint, n, count // rounds, interval_s, receiver)
    finally:
        if why is None:
            _netns_down()
    for (transport, n), got in lags.items():
        out.setdefault(transport, {})[f"{n}_windows"] = _summary(got, n)
    if why is not None:
        out["tcp_across_netns"] = {"skipped": why}
    for rows in out.values():
        for key, row in rows.items():
            if isinstance(row, dict) and row.get("p50_ms") is not None:
                row["p50_more_than_ipc_ms"] = row["p50_ms"] - out["ipc"][key]["p50_ms"]
    return out


@dataclasses.dataclass(frozen=True)
class _SizesConfig:
    totals: dict  # topic -> encoded bytes, filled by the sink


class _Sizes(TopicSink):
    """Sink adding up the encoded size of every message per topic (into its config's
    ``totals``)."""

    Config = _SizesConfig
    INPUTS = ("frames", "blobs", "windows", "maps", "points", "tracks")

    def process_topic(self, topic: str, msg: Any) -> tuple:
        size = sum(len(bytes(f)) for f in encode(msg, topic))
        self.config.totals[topic] = self.config.totals.get(topic, 0) + size
        return ()


def bytes_per_frame(groups: tuple[int, ...], frames: int = 20) -> dict[str, Any]:
    """Encoded bytes per frame of each topic of ``configs/live.yaml`` at each group count
    (a short inline run; the mean over its frames)."""
    out = {}
    for n in groups:
        config, plans = load(REPO / "configs" / "live.yaml", [
            "run.mode=inline", f"run.frames={frames}", "run.rate_hz=null",
            f"stages.source.groups={n}"])
        sizes = _SizesConfig(totals={})
        chain = [p for p in plans if p.output is not None]
        chain.append(StagePlan("sizes", "sizes", _Sizes, sizes, _Sizes.INPUTS, None,
                               QueueConfig()))
        report = run_inline(chain, config.run)
        out[f"{n}_groups"] = {t: round(b / report["frames"]) for t, b in sizes.totals.items()}
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file (key 'links' updated)")
    p.add_argument("--count", type=int, default=500, help="messages per transport and size")
    p.add_argument("--interval-ms", type=float, default=2.0, help="gap between messages")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds in which the transports take turns (default 5)")
    p.add_argument("--receive", help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    if args.receive:  # the receiver process
        print(json.dumps(receive(args.receive, args.count, timeout_s=10.0)), flush=True)
        return 0
    links = {
        "command": f"python -m pipeline linkbench --count {args.count} "
                   f"--interval-ms {args.interval_ms:g} --rounds {args.rounds}",
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(),
                    "load_average": list(os.getloadavg())},
        "latency": latencies((6, 24), args.count, args.interval_ms / 1e3, args.rounds),
        "bytes_per_frame_per_link": bytes_per_frame((6, 24)),
    }
    out = write_section(args.out, "links", links)
    for transport, rows in links["latency"].items():
        for key, row in rows.items():
            if isinstance(row, dict) and row.get("p50_ms") is not None:
                print(f"{transport:18s} {key:11s} p50 {row['p50_ms']:.3f} ms  "
                      f"p99 {row['p99_ms']:.3f} ms  (+{row['p50_more_than_ipc_ms']:.3f} "
                      f"over ipc)  {row['bytes']} bytes")
            elif key == "skipped":
                print(f"{transport:18s} skipped: {row}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.linkbench")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
