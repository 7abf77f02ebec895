"""Data-parallel training and evaluation under torchrun (2 CPU ranks, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from models.__main__ import main
from sim.dataset import save_npz, simulate

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "models", *args]
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def write_config(path: Path, data_dir: Path, out: Path, batch: int) -> Path:
    path.write_text(yaml.safe_dump({
        "model": "fastunmix", "model_config": {"channels": 8, "blocks": 1, "hr_channels": 4},
        "data": str(data_dir), "target": "splat", "loss_weights": {"reg": 1.0}, "lr": 3e-3,
        "batch_trajectories": batch, "sequence_length": 8, "epochs": 6,
        "val_every_steps": 1000, "checkpoint_every_steps": 1000, "threads": 1,
        "out": str(out)}))
    return path


def test_two_ranks_train_like_one_process_with_the_doubled_batch(data_dir, tmp_path):
    # every step, rank r takes trajectory r of the same global draw, and DDP averages the two
    # gradients: the same update as one process taking both trajectories in one batch
    two = write_config(tmp_path / "two.yaml", data_dir, tmp_path / "two", batch=1)
    one = write_config(tmp_path / "one.yaml", data_dir, tmp_path / "one", batch=2)
    done = torchrun("train", "--config", str(two), "--no-progress", cwd=tmp_path)
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0
    assert main(["train", "--config", str(one), "--no-progress"]) == 0  # here, one process
    a = torch.load(tmp_path / "two" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "one" / "last.ckpt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for name, value in b["model"].items():
        torch.testing.assert_close(a["model"][name], value, rtol=1e-4, atol=1e-5)
    meta = json.loads((tmp_path / "two" / "best.json").read_text())
    assert meta["ranks"] == 2 and meta["epochs"] == 6.0
    rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in rows if '"reg"' in r]) == 6  # one log, rank 0's


def test_sharded_evaluation_scores_exactly_like_one_process(tmp_path):
    # CSO-mAP pools every frame's matches: the shards' detections are merged, not their APs
    save_npz(tmp_path / "test.npz", simulate(3, seed=7, noise_sigma=2.0))
    args = ["evaluate", "--model", "fastunmix", "--data", str(tmp_path), "--split", "test",
            "--mode", "points"]
    torchrun(*args, "--out", str(tmp_path / "two.json"), cwd=tmp_path)
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    two = json.loads((tmp_path / "two.json").read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    assert (two["ranks"], one["ranks"]) == (2, 1)
    assert two["frames"] == one["frames"] == 3 * 16
    for key in ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25", "count_accuracy",
                "noise_estimate", "macs"):
        assert two[key] == one[key], key  # the same frames scored in the same order
