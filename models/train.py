"""Train any registered model: ``python -m models train --config FILE [--budget-minutes M]``.

Plain PyTorch loop (Adam), trajectories shuffled per epoch with 20-frame blocks kept intact,
seeded, checkpoint + resume, validation CSO-mAP every N steps with the best checkpoint kept,
a progress bar with loss and ETA, a metrics log (JSON lines) and a learning-curve PNG.

Outputs in ``out``: ``last.ckpt`` (resume point), ``best.pt`` + ``best.json`` (weights with
metadata, see :mod:`models.weights`), ``metrics.jsonl``, ``curve.png``, ``config.yaml``.

Under ``torchrun --nproc_per_node N`` it trains data-parallel (:mod:`models.distributed`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from models.config import load_config
from models.distributed import join, leave, sequence_forward
from models.registry import get_model
from models.snap import snap_map
from models.weights import load_weights, save_weights
from sim import load_dataset
from sim.background_level import ring_levels
from sim.backgrounds import background_images, random_crops
from sim.generate import BACKGROUND_STREAM
from sim.geometry import WINDOW
from sim.phi import fit_qinit
from sim.render import gt_map, splat_map

TARGETS = {"gt": gt_map, "splat": splat_map, "snap": snap_map}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the YAML file's keys; built by
    :func:`models.config.load_config`, so unknown keys and wrong types are named)."""

    model: str = "derefnet"
    model_config: dict = field(default_factory=dict)
    data: str = "data/seqcsist"
    # More dataset roots whose train splits join the training pool, each with the PSF σ its
    # data state (e.g. the same families at other σ); every sequence is shown to the model
    # with its own σ (UnmixingModel.set_psf). Validation uses ``data``'s val split.
    more_data: list = field(default_factory=list)
    train_split: str = "train"
    val_split: str = "val"
    target: str = "gt"  # "gt" (reference GT maps), "splat" (bilinear splat) or "snap"
    # (the truth snapped to the grid, models.snap.snap_map: the grid head's target)
    target_scale: float = 1.0  # the target maps are multiplied by this
    output: str = "map"  # the model output trained: "map" or "grid" (its grid head)
    # Train only the parameters whose names start with one of these (e.g. [grid_head]); the
    # rest stay frozen and may be missing from init_weights. Empty = train everything.
    train_only: list = field(default_factory=list)
    # Faithful LISTA-family bug (docs/reference.md §5.8, §8 #9): regress every map onto the
    # targets of all frames of its training sequence (the whole trajectory at length 20).
    target_broadcast: bool = False
    loss_weights: dict = field(default_factory=lambda: {"reg": 1.0, "cons": 0.1, "align": 0.1})
    lr: float = 1e-4
    lr_schedule: str = "constant"  # "constant" or "cosine" (over the budget or the epochs)
    lr_min: float = 1e-6
    weight_decay: float = 1e-5
    grad_clip: float = 0.0  # 0 = off
    noise_augment: float = 0.0  # max std (grey levels) of noise added to a sequence's frames
    noise_fraction: float = 0.5  # fraction of sequences that get noise (σ ~ U(0, max))
    # Static backgrounds added to a sequence's frames (before the noise): "builtin" (the
    # IR-like scenes of sim.clutter) or a folder of images; a random patch of a random scene,
    # its full scale at U(0, background_amplitude) grey levels, on background_fraction of them.
    background_augment: str | None = None
    background_fraction: float = 0.5
    background_amplitude: float = 64.0
    # Subtract each sequence's background level (sim.background_level.ring_levels, after the
    # augmentations) from the training frames and each validation trajectory's level from
    # the validation frames, as the live cropper does with each window's.
    subtract_background: bool = False
    batch_trajectories: int = 1
    sequence_length: int = 20  # frames per training sequence (≥ 5); 20 = whole trajectory
    epochs: int = 100
    budget_minutes: float = 0.0  # 0 = no limit
    val_every_steps: int = 500
    val_trajectories: int = 0  # 0 = the whole val split
    val_mode: str = "grid"
    checkpoint_every_steps: int = 100
    seed: int = 0
    init_weights: str | None = None  # start from these weights (e.g. the shipped ones)
    threads: int = 2
    device: str = "cpu"
    out: str = "runs/derefnet"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {sorted(TARGETS)}, got {self.target!r}")
        if self.sequence_length < WINDOW:
            raise ValueError(f"sequence_length must be >= {WINDOW}")


def _loss(forward, frames, start, target, weights: dict, broadcast: bool = False,
          critic=None):
    """Weighted training loss of a batch of sequences; returns (total, detached parts).

    ``forward``: the model's ``forward_sequences`` (or its data-parallel wrapper,
    :func:`models.distributed.sequence_forward`)."""
    maps, aux = forward(frames, start)
    return _weighted_loss(maps, aux, target, weights, broadcast, critic)


def _weighted_loss(maps, aux: dict, target, weights: dict, broadcast: bool = False,
                   critic=None):
    """Σ weights[k] · part k over ``reg`` (MSE to the target), the model's auxiliary losses,
    ``l1`` (mean |error|, only when weighted) and, given a ``critic`` (see
    :meth:`UnmixingModel.make_discriminator`), its adversarial loss ``gan``. Returns (total,
    detached parts).

    ``target`` holds one map per window (B, L − 4, 33, 33), or with ``broadcast`` one per
    frame (B, L, 33, 33), every window's map then being compared with all of them (the LISTA
    family's reference bug, for the faithful recipes; not combined with a critic).
    """
    err = maps[:, :, None] - target[:, None] if broadcast else maps - target
    parts = {"reg": torch.mean(err**2), **aux}
    if weights.get("l1"):
        parts["l1"] = torch.mean(err.abs())
    if critic is not None:
        parts["gan"] = critic.generator_loss(maps, target)
    total = sum(weights.get(k, 0.0) * v for k, v in parts.items() if v is not None)
    return total, {k: v.detach() for k, v in parts.items() if v is not None}


class Trainer:
    """Owns the model, optimiser, data and run folder of one training run."""

    def __init__(self, cfg: TrainConfig, progress: bool = True) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        self.ranks = join(cfg.device)
        self.progress = progress and self.ranks.main
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and self.ranks.distributed:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls; cuDNN convs use TF32 already
        pools = [load_dataset(d, cfg.train_split) for d in [cfg.data, *cfg.more_data]]
        self.train_ds = pools[0]
        self.val_ds = load_dataset(cfg.data, cfg.val_split)
        if cfg.val_trajectories:
            self.val_ds = self.val_ds.subset(range(min(cfg.val_trajectories,
                                                        self.val_ds.n_trajectories)))
        if cfg.subtract_background:
            self.val_ds = self.val_ds.background_subtracted()
        make_target = TARGETS[cfg.target]
        self.images = torch.from_numpy(np.concatenate(
            [ds.trajectory_images().astype(np.float32) for ds in pools]))
        self.targets = torch.from_numpy(np.concatenate(
            [make_target(ds.trajectory_targets()) for ds in pools]) * np.float32(cfg.target_scale))
        #: PSF σ of every pooled trajectory (n,), and the range the weights are trained for
        self.traj_sigma = np.concatenate([np.full(ds.n_trajectories, ds.sigma) for ds in pools])
        self.psf_range = [float(self.traj_sigma.min()), float(self.traj_sigma.max())]
        self.model = get_model(cfg.model, **cfg.model_config).to(self.device)
        self.model.set_qinit(fit_qinit(self.targets.reshape(-1, self.targets.shape[-1] ** 2)
                                       .numpy()))
        if cfg.init_weights:
            self.load_init_weights(cfg.init_weights)
        self.model.set_output(cfg.output)
        self.params = self.trained_parameters()
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # GANs: the discriminator and its optimiser (same lr and weight decay) live here only
        self.critic = self.model.make_discriminator()
        if self.critic is not None and self.ranks.distributed:
            raise ValueError(f"{cfg.model} is trained against a discriminator, which "
                             "distributed training does not support yet: train it in one process")
        self.forward = sequence_forward(self.model, self.ranks, self.device)
        self.critic_opt = None
        if self.critic is not None:
            self.critic.to(self.device).train()
            self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr,
                                               weight_decay=cfg.weight_decay)
        self.scenes = None
        if cfg.background_augment:
            self.scenes = background_images(cfg.background_augment,
                                            np.random.default_rng([cfg.seed, BACKGROUND_STREAM]))
        # self.rng (trajectory order, sequence starts) is the same on every rank; aug_rng
        # (backgrounds, noise) is the rank's own
        self.rng = np.random.default_rng(cfg.seed)
        self.aug_rng = self.rank_rng(0)
        self.step, self.epoch, self.seconds = 0, 0, 0.0
        self.best = -math.inf
        self.order = self.rng.permutation(len(self.images))
        self.cursor = 0

    def load_init_weights(self, path: str) -> None:
        """Start from ``path``'s weights; only parameters under ``train_only`` may be missing
        from them (a new head on a trained trunk); the model initialises those
        (:meth:`~models.base.UnmixingModel.init_missing`)."""
        start, _ = load_weights(path)
        missing, unexpected = self.model.load_state_dict(
            self.model.adapt_state(start.state_dict()), strict=False)
        untrained = [k for k in missing if not k.startswith(tuple(self.cfg.train_only))]
        if untrained or unexpected:
            raise ValueError(f"init_weights {path} does not fit {self.cfg.model} "
                             f"{self.cfg.model_config}: missing {untrained}, unexpected "
                             f"{unexpected}")
        self.model.init_missing(missing)

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates (all, or those under ``train_only``); the
        others get ``requires_grad = False``."""
        if not self.cfg.train_only:
            return list(self.model.parameters())
        prefixes = tuple(self.cfg.train_only)
        params = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
            if p.requires_grad:
                params.append(p)
        if not params:
            raise ValueError(f"train_only {self.cfg.train_only} matches no parameter of "
                             f"{self.cfg.model}")
        return params

    def rank_rng(self, step: int) -> np.random.Generator:
        """The augmentation generator: ``self.rng`` itself in one process; per rank (and per
        resume step) under ``torchrun``."""
        if not self.ranks.distributed:
            return self.rng
        return np.random.default_rng([self.cfg.seed, 1 + self.ranks.rank, step])

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        state = {
            "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "step": self.step, "epoch": self.epoch, "seconds": self.seconds, "best": self.best,
            "order": self.order, "cursor": self.cursor, "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "config": asdict(self.cfg),
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_opt"] = self.critic_opt.state_dict()
        return state

    def resume(self, path: Path) -> None:
        ck = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        if self.critic is not None:
            self.critic.load_state_dict(ck["critic"])
            self.critic_opt.load_state_dict(ck["critic_opt"])
        self.step, self.epoch, self.seconds = ck["step"], ck["epoch"], ck["seconds"]
        self.best, self.order, self.cursor = ck["best"], ck["order"], ck["cursor"]
        self.rng.bit_generator.state = ck["rng"]
        self.aug_rng = self.rank_rng(self.step)
        torch.set_rng_state(ck["torch_rng"])

    def save_checkpoint(self) -> None:
        if not self.ranks.main:
            return
        tmp = self.out / "last.ckpt.tmp"
        torch.save(self.state(), tmp)
        tmp.replace(self.out / "last.ckpt")

    # -- data -------------------------------------------------------------------------------
    def next_batch(self):
        """B sequences from the shuffled trajectory order (a new permutation each epoch),
        and the model told each window's PSF σ.

        Under ``torchrun`` every rank draws the same world × B trajectories and starts and
        keeps its own B of them: one step sees world × B distinct sequences."""
        cfg, traj_len = self.cfg, self.images.shape[1]
        picks = []
        while len(picks) < cfg.batch_trajectories * self.ranks.world:
            if self.cursor >= len(self.order):
                self.epoch += 1
                self.order = self.rng.permutation(len(self.order))
                self.cursor = 0
            picks.append(int(self.order[self.cursor]))
            self.cursor += 1
        length = min(cfg.sequence_length, traj_len)
        starts = self.rng.integers(0, traj_len - length + 1, size=len(picks))
        mine = slice(self.ranks.rank * cfg.batch_trajectories,
                     (self.ranks.rank + 1) * cfg.batch_trajectories)
        picks, starts = picks[mine], starts[mine]
        pairs = list(zip(picks, starts, strict=True))
        frames = torch.stack([self.images[p, s:s + length] for p, s in pairs])
        if self.scenes is not None:
            frames = self.add_backgrounds(frames)
        if cfg.noise_augment > 0:
            frames = self.add_noise(frames)
        if cfg.subtract_background:
            frames = frames - torch.from_numpy(ring_levels(frames.numpy()))[:, None, None, None]
        half = 0 if cfg.target_broadcast else WINDOW // 2
        target = torch.stack([self.targets[p, s + half:s + length - half] for p, s in pairs])
        # every window of a sequence has its σ (the model's default forward_sequences lays
        # the windows out sequence by sequence)
        windows = length - WINDOW + 1
        self.model.set_psf(torch.from_numpy(np.repeat(self.traj_sigma[picks], windows)
                                            .astype(np.float32)))
        return frames, torch.as_tensor(starts), target

    def add_backgrounds(self, frames: torch.Tensor) -> torch.Tensor:
        """A static background patch (one per sequence, the same in every frame) on a random
        fraction of sequences, re-quantised to uint8. frames: (B, L, 11, 11) grey levels."""
        n = frames.shape[0]
        rng = self.aug_rng
        crops = random_crops(self.scenes, n, rng, frames.shape[-1], amplitude=1.0)
        amplitude = rng.uniform(0, self.cfg.background_amplitude, size=n)
        amplitude *= rng.random(n) < self.cfg.background_fraction
        patches = torch.from_numpy((crops * amplitude[:, None, None]).astype(np.float32))
        return (frames + patches[:, None]).round().clamp(0, 255)

    def add_noise(self, frames: torch.Tensor) -> torch.Tensor:
        """Additive Gaussian noise on a random fraction of sequences, re-quantised to uint8."""
        n, rng = frames.shape[0], self.aug_rng
        sigma = rng.uniform(0, self.cfg.noise_augment, size=n)
        sigma *= rng.random(n) < self.cfg.noise_fraction
        noise = rng.standard_normal(frames.shape).astype(np.float32)
        noise *= sigma.astype(np.float32)[:, None, None, None]
        return (frames + torch.from_numpy(noise)).round().clamp(0, 255)

    # -- loop -------------------------------------------------------------------------------
    def lr_at(self, progress: float) -> float:
        cfg = self.cfg
        if cfg.lr_schedule == "constant":
            return cfg.lr
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(progress, 1)))

    def progress_fraction(self) -> float:
        cfg = self.cfg
        if cfg.budget_minutes:
            return self.seconds / (cfg.budget_minutes * 60)
        steps_per_epoch = math.ceil(len(self.images)
                                    / (cfg.batch_trajectories * self.ranks.world))
        return self.step / (cfg.epochs * steps_per_epoch)

    def validate(self) -> dict:
        from models.harness import evaluate_model

        self.model.eval()
        result = evaluate_model(self.model, self.val_ds, mode=self.cfg.val_mode)
        self.enter_training_mode()
        return result

    def enter_training_mode(self) -> None:
        """Training mode, except with ``train_only``: the model then stays in eval mode, so
        that it skips auxiliary losses whose gradients would reach no trained parameter and
        runs its frozen layers on their inference paths (the heads trained this way have no
        dropout or batch norm)."""
        self.model.train(not self.cfg.train_only)

    def log(self, record: dict) -> None:
        if not self.ranks.main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def run(self) -> dict | None:
        """Train to the end of the budget or the epochs; the final validation's figures (on
        rank 0; None on the other ranks)."""
        cfg = self.cfg
        if self.ranks.main:
            (self.out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        self.enter_training_mode()
        bar = tqdm(total=cfg.budget_minutes * 60 if cfg.budget_minutes else None,
                   unit="s" if cfg.budget_minutes else "step", disable=not self.progress,
                   desc=f"train {cfg.model}")
        running = None
        while self.progress_fraction() < 1.0:
            t0 = time.perf_counter()
            lr = self.lr_at(self.progress_fraction())
            for group in self.opt.param_groups:
                group["lr"] = lr
            frames, starts, target = (t.to(self.device) for t in self.next_batch())
            if self.critic is None:
                loss, parts = _loss(self.forward, frames, starts, target, cfg.loss_weights,
                                    cfg.target_broadcast)
            else:
                loss, parts = self.adversarial_loss(frames, starts, target, lr)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.opt.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # the budget counts GPU time, not launches
            self.step += 1
            dt = self.ranks.max(time.perf_counter() - t0)  # the budget ends on every rank at once
            parts = {k: float(v) for k, v in parts.items()}
            self.seconds += dt
            running = parts["reg"] if running is None else 0.98 * running + 0.02 * parts["reg"]
            loss_value = float(loss.detach())
            bar.update(dt if cfg.budget_minutes else 1)
            bar.set_postfix(loss=f"{loss_value:.1f}", mse=f"{running:.1f}", ep=self.epoch)
            self.log({"step": self.step, "epoch": self.epoch, "seconds": round(self.seconds, 2),
                      "lr": lr, "loss": loss_value, **parts})
            if self.step % cfg.checkpoint_every_steps == 0:
                self.save_checkpoint()
            if self.step % cfg.val_every_steps == 0:
                self.validate_and_keep_best()
        bar.close()
        self.save_checkpoint()
        return self.validate_and_keep_best()

    def adversarial_loss(self, frames, starts, target, lr: float):
        """GAN step: update the discriminator on this batch's maps (D step), then return the
        generator's loss on the same maps (G step: weighted pixel + adversarial ``gan``);
        the discriminator's loss is logged as ``disc``."""
        maps, aux = self.model.forward_sequences(frames, starts)
        d_loss = self.critic.discriminator_loss(maps.detach(), target)
        for group in self.critic_opt.param_groups:
            group["lr"] = lr
        self.critic_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.critic_opt.step()
        loss, parts = _weighted_loss(maps, aux, target, self.cfg.loss_weights,
                                     critic=self.critic)
        return loss, {**parts, "disc": d_loss.detach()}

    def validate_and_keep_best(self) -> dict | None:
        """Validate on rank 0 (the others wait) and keep the best weights; rank 0's figures."""
        if not self.ranks.main:
            self.ranks.barrier()
            return None
        result = self.validate()
        record = {"step": self.step, "epoch": self.epoch, "seconds": round(self.seconds, 2),
                  "val": {k: result[k] for k in ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")}}
        self.log(record)
        if result["mAP"] > self.best:
            self.best = result["mAP"]
            meta = {
                "data": self.cfg.data, "target": self.cfg.target, "seed": self.cfg.seed,
                "step": self.step, "ranks": self.ranks.world,
                "epochs": round(self.step * self.cfg.batch_trajectories * self.ranks.world
                                / len(self.images), 3),
                "psf_range": self.psf_range, "more_data": self.cfg.more_data,
                "train_seconds": round(self.seconds, 1), "val": record["val"],
                "train_config": asdict(self.cfg),
            }
            save_weights(self.out / "best.pt", self.model, self.cfg.model,
                         getattr(self.model, "config", self.cfg.model_config), meta)
        plot_curve(self.out)
        self.ranks.barrier()
        return result


def plot_curve(out: Path) -> None:
    """Learning curve (training MSE and validation mAP against steps) as ``out/curve.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reg" in r]
    val = [r for r in rows if "val" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps = np.array([r["step"] for r in train])
        mse = np.array([r["reg"] for r in train])
        k = max(1, len(mse) // 50)
        smooth = np.convolve(mse, np.ones(k) / k, mode="valid")
        ax.semilogy(steps[k - 1:], smooth, color="tab:blue", label="train MSE (smoothed)")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (grey levels²)")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [100 * r["val"]["mAP"] for r in val], "o-",
                 color="tab:red", label="val CSO-mAP")
        ax2.set_ylabel("val CSO-mAP ×100")
    fig.legend(loc="upper center", ncol=2)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(out / "curve.png", dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training YAML (see configs/models/)")
    p.add_argument("--budget-minutes", type=float, help="stop after this much training time")
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the config's device")
    p.add_argument("--out", help="override the run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (YAML value), e.g. --set lr=3e-4; repeatable")


def run(args: argparse.Namespace) -> int:
    flags = [f"{key}={getattr(args, key)}" for key in ("budget_minutes", "device", "out")
             if getattr(args, key) is not None]
    cfg = load_config(TrainConfig, args.config, [*args.set, *flags])
    trainer = Trainer(cfg, progress=not args.no_progress)
    if args.resume:
        ckpt = Path(cfg.out) / "last.ckpt"
        if not ckpt.exists():
            raise SystemExit(f"--resume: {ckpt} does not exist")
        trainer.resume(ckpt)
    result = trainer.run()
    leave(trainer.ranks)
    if result is not None:
        print(json.dumps({k: result[k] for k in ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")}))
    return 0
