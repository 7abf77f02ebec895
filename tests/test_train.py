"""Training harness: a tiny overfit, checkpoint/resume, best weights with metadata."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import models
from models.config import ConfigError, load_config
from models.train import TrainConfig, Trainer
from models.weights import load_weights
from sim.background_level import ring_levels


def config(data_dir, out, **kw):
    base = dict(model="fastunmix", model_config={"channels": 16, "blocks": 1, "hr_channels": 4},
                data=str(data_dir), target="splat", loss_weights={"reg": 1.0}, lr=3e-3,
                batch_trajectories=2, sequence_length=20, epochs=30, val_every_steps=1000,
                checkpoint_every_steps=5, threads=1, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_overfit_loss_falls_and_best_weights_are_written(data_dir, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(config(data_dir, tmp_path), progress=False)
    result = trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["reg"] for r in rows if "reg" in r]
    assert len(losses) == 30  # 2 trajectories per step, 1 step per epoch
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert 0.0 <= result["mAP"] <= 1.0
    model, meta = load_weights(tmp_path / "best.pt")
    assert meta["model"] == "fastunmix" and meta["step"] == 30
    assert meta["train_config"]["target"] == "splat"
    assert (tmp_path / "curve.png").stat().st_size > 1000
    # Qinit is fitted on the training targets and stored with the weights
    assert model.qinit.abs().sum() > 0


def test_resume_continues_the_same_run(data_dir, tmp_path):
    full = Trainer(config(data_dir, tmp_path / "full", epochs=6), progress=False)
    full.run()
    part = Trainer(config(data_dir, tmp_path / "part", epochs=3), progress=False)
    part.run()
    resumed = Trainer(config(data_dir, tmp_path / "part", epochs=6), progress=False)
    resumed.resume(tmp_path / "part" / "last.ckpt")
    assert resumed.step == 3
    resumed.run()
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_config_errors_name_the_file_and_key_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "fastunmix", "learning_rate": 1.0}))
    with pytest.raises(ConfigError, match=r"c\.yaml: learning_rate: unknown key for "
                                          r"TrainConfig; valid keys: model, "):
        load_config(TrainConfig, path)
    path.write_text(yaml.safe_dump({"model": "fastunmix", "lr": "fast"}))
    with pytest.raises(ConfigError, match=r"lr: Input should be a valid number"):
        load_config(TrainConfig, path)
    cfg = load_config(TrainConfig, path, ["lr=3e-4", "loss_weights.reg=2", "target=splat"])
    assert (cfg.lr, cfg.loss_weights, cfg.target) == (3e-4, {"reg": 2}, "splat")
    with pytest.raises(ConfigError, match="target must be one of"):
        load_config(TrainConfig, path, ["lr=1", "target=nearest"])


def test_init_weights_starts_from_saved_weights(data_dir, tmp_path):
    first = Trainer(config(data_dir, tmp_path / "a", epochs=2), progress=False)
    first.run()
    again = Trainer(config(data_dir, tmp_path / "b", epochs=2,
                           init_weights=str(tmp_path / "a" / "best.pt")), progress=False)
    saved, _ = load_weights(tmp_path / "a" / "best.pt")
    for a, b in zip(saved.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/models/*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_training_configs_parse_and_build_their_model(path):
    cfg = load_config(TrainConfig, path)
    model = models.get_model(cfg.model, **cfg.model_config)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert cfg.target in ("gt", "splat", "snap")
    model.set_output(cfg.output)  # a grid output only on a model with a grid head


def test_background_augment_adds_one_static_patch_per_sequence(data_dir, tmp_path):
    trainer = Trainer(config(data_dir, tmp_path, background_augment="builtin",
                             background_fraction=1.0, background_amplitude=64.0),
                      progress=False)
    frames = torch.zeros(6, 5, 11, 11)
    out = trainer.add_backgrounds(frames)
    assert out.min() >= 0 and out.max() <= 64
    # static: every frame of a sequence gets the same patch; sequences differ
    assert torch.equal(out[:, :1].expand_as(out), out)
    assert len({tuple(o[0].flatten().tolist()) for o in out}) > 1
    assert (out.flatten(1).amax(1) - out.flatten(1).amin(1)).median() > 0  # textured


def test_subtract_background_removes_each_sequences_ring_level(data_dir, tmp_path):
    plain = Trainer(config(data_dir, tmp_path / "a", background_augment="builtin",
                           background_fraction=1.0, background_amplitude=64.0), progress=False)
    level = Trainer(config(data_dir, tmp_path / "b", background_augment="builtin",
                           background_fraction=1.0, background_amplitude=64.0,
                           subtract_background=True), progress=False)
    raw, _, _ = plain.next_batch()
    out, _, _ = level.next_batch()  # same seed: the same sequences and backgrounds
    levels = ring_levels(raw.numpy())
    assert levels.max() > 0  # the backgrounds lift the ring
    torch.testing.assert_close(out, raw - torch.from_numpy(levels)[:, None, None, None])
    assert level.val_ds.images.dtype == np.float32  # SeqDataset.background_subtracted


def test_a_grid_head_trains_alone_on_the_snapped_truth(data_dir, tmp_path):
    """train_only: the head learns from the trunk's weights, which stay as they were; the
    weights keep both outputs and the harness scores the head's maps in grid mode."""
    from models.harness import predict_maps
    from models.snap import snap_map
    from sim import load_dataset

    first = Trainer(config(data_dir, tmp_path / "trunk", epochs=2), progress=False)
    first.run()
    head_cfg = {"channels": 16, "blocks": 1, "hr_channels": 4, "grid_head": True}
    trainer = Trainer(config(data_dir, tmp_path / "head", epochs=8, model_config=head_cfg,
                             init_weights=str(tmp_path / "trunk" / "best.pt"), target="snap",
                             output="grid", train_only=["grid_head"], target_scale=2.0),
                      progress=False)
    expected = snap_map(trainer.train_ds.trajectory_targets()) * 2
    np.testing.assert_array_equal(trainer.targets.numpy(), expected)
    head_before = [p.detach().clone() for p in trainer.model.grid_head.parameters()]
    trainer.run()
    trunk, _ = load_weights(tmp_path / "trunk" / "best.pt")
    model, meta = load_weights(tmp_path / "head" / "best.pt")
    assert meta["train_config"]["train_only"] == ["grid_head"]
    for name, p in trunk.named_parameters():
        assert torch.equal(p, model.get_parameter(name)), name
    assert any(not torch.equal(a, b)
               for a, b in zip(head_before, model.grid_head.parameters(), strict=True))
    assert model.output == "map"
    pred = predict_maps(model, load_dataset(data_dir, "val"))
    plain = predict_maps(trunk, load_dataset(data_dir, "val"))
    np.testing.assert_array_equal(pred.maps, plain.maps)
    assert pred.grid_maps.shape == pred.maps.shape
    assert not np.array_equal(pred.grid_maps, pred.maps)
    assert pred.maps_for("grid") is pred.grid_maps and pred.maps_for("points") is pred.maps
    assert plain.grid_maps is None and plain.maps_for("grid") is plain.maps


def test_a_grid_branch_missing_from_init_weights_starts_from_the_trunk(data_dir, tmp_path):
    Trainer(config(data_dir, tmp_path / "trunk", epochs=1), progress=False).run()
    head_cfg = {"channels": 16, "blocks": 1, "hr_channels": 4, "grid_head": True,
                "grid_branch": 1}
    trainer = Trainer(config(data_dir, tmp_path / "head", model_config=head_cfg,
                             init_weights=str(tmp_path / "trunk" / "best.pt"),
                             train_only=["grid_head"]), progress=False)
    model = trainer.model
    torch.testing.assert_close(model.grid_head.branch[0].state_dict(),
                               model.blocks[0].state_dict())
    torch.testing.assert_close(model.grid_head.branch[1].state_dict(), model.up.state_dict())


def test_init_weights_may_lack_only_the_trained_parameters(data_dir, tmp_path):
    Trainer(config(data_dir, tmp_path / "trunk", epochs=1), progress=False).run()
    head_cfg = {"channels": 16, "blocks": 1, "hr_channels": 4, "grid_head": True}
    with pytest.raises(ValueError, match=r"missing \['grid_head\.conv1\.weight'"):
        Trainer(config(data_dir, tmp_path / "all", model_config=head_cfg,
                       init_weights=str(tmp_path / "trunk" / "best.pt")), progress=False)
    with pytest.raises(ValueError, match="matches no parameter"):
        Trainer(config(data_dir, tmp_path / "none", model_config=head_cfg,
                       train_only=["nothing"]), progress=False)


def test_more_data_pools_each_sequence_with_its_psf(tmp_path):
    from sim.dataset import save_npz, simulate
    from sim.families import PRESETS

    for name, sigma in (("a", 0.5), ("b", 0.7)):
        (tmp_path / name).mkdir()
        for split, seed in (("train", 1), ("val", 2)):
            save_npz(tmp_path / name / f"{split}.npz",
                     simulate(2, seed, PRESETS["single"], sigma=sigma))
    cfg = TrainConfig(model="fastunmix", data=str(tmp_path / "a"),
                      more_data=[str(tmp_path / "b")], target="splat",
                      model_config={"channels": 8, "blocks": 1, "hr_channels": 4,
                                    "psf_input": True},
                      loss_weights={"reg": 1.0}, batch_trajectories=4, epochs=1,
                      val_every_steps=1, val_trajectories=1, threads=1,
                      out=str(tmp_path / "run"))
    trainer = Trainer(cfg, progress=False)
    assert len(trainer.images) == 4 and trainer.psf_range == [0.5, 0.7]
    frames, _, _ = trainer.next_batch()
    sigma = trainer.model.psf_sigma.numpy()
    picks = trainer.order[:4]
    np.testing.assert_allclose(sigma, np.repeat(trainer.traj_sigma[picks], 16))
    trainer.run()
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["psf_range"] == [0.5, 0.7]
