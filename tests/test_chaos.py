"""Chaos: stage processes of the live chain, killed with SIGKILL in turn mid-run.

For each victim a fresh ``python -m pipeline run`` of the standard chain, on small frames, runs
until the chain is up and frames flow; then that process gets SIGKILL. The runner must name the
dead stage, exit 1 within 5 s, and leave no stage process behind.

The runner watches every process the same way (its sentinel in the control poller), so the
victims are one of each role rather than all twelve processes (each case costs a chain start,
~10 s on 2 cores): the source, a model stage in the middle of the chain and a runner
service.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
#: Every process of configs/live.yaml with a tap: its stages and the runner's services.
STAGES = ("source", "_tap", "detector", "cropper", "unmixer", "extractor", "tracker", "scoring",
          "jsonl", "overlay", "console", "_digest")
#: The processes killed: one of each role.
VICTIMS = ("source", "unmixer", "_digest")
EXIT_WITHIN_S = 5.0


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (absent, or a zombie waiting for init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("victim", VICTIMS)
def test_killing_any_stage_names_it_and_ends_the_run(victim, tmp_path):
    cmd = [sys.executable, "-m", "pipeline", "run", str(REPO / "configs" / "live.yaml"),
           "--frames", "100000", "--publish", f"ipc://{tmp_path}/tap",
           "--set", "stages.source.config.height=64", "--set", "stages.source.config.width=64",
           "--set", "stages.source.config.groups=1",
           "--set", f"stages.jsonl.config.path={tmp_path}/points.jsonl",
           "--set", f"stages.overlay.config.directory={tmp_path}/overlay",
           "--set", "stages.console.config.every=100000", "--set", "run.capacity_check=false"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
    reader.start()
    pids: dict[str, int] = {}
    survivors: list[str] = []
    elapsed = float("inf")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the pids, then the chain running
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            log.append(line)
            if "stage processes:" in line:
                pids = {n: int(p) for n, p in re.findall(r"(\w+) pid (\d+)", line)}
            if "stages in processes mode" in line:
                break
        assert set(pids) == set(STAGES), "".join(log)
        time.sleep(1.0)  # frames flow
        assert proc.poll() is None, "".join(log)
        os.kill(pids[victim], signal.SIGKILL)
        t0 = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):  # the assertions below say so
            proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5.0  # orphans, if any, would still run after this
        while time.monotonic() < deadline and not all(_gone(pid) for pid in pids.values()):
            time.sleep(0.1)
        survivors = [n for n, pid in pids.items() if not _gone(pid)]
        for name in survivors:  # clean up before failing
            os.kill(pids[name], signal.SIGKILL)
        reader.join(5)  # the rest of the log (EOF once every process holding stderr is gone)
        if not reader.is_alive():  # (closing under a blocked reader would deadlock)
            proc.stderr.close()
    while not lines.empty():
        log.append(lines.get_nowait())
    err = "".join(log)
    assert survivors == [], err[-3000:]
    assert proc.returncode == 1, err[-3000:]
    assert elapsed < EXIT_WITHIN_S, f"exit took {elapsed:.1f} s"
    assert f"stage '{victim}' (pid {pids[victim]}) was killed by signal 9" in err, err[-3000:]
