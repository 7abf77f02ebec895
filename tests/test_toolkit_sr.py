"""The super-resolution baselines of Table VII (models/sr): shapes, sizes, weights files,
training (GANs with their discriminator), and the reference quirks kept behind ``faithful``."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import models
from models.harness import count_macs, count_params
from models.layers.deform import deform_conv2d
from models.protocol import eval_windows
from models.train import TrainConfig, Trainer
from models.weights import load_weights, save_weights
from sim.dataset import simulate

torch.set_num_threads(1)

#: reduced configs of every SR model (tests/test_models.py runs its generic checks on them too)
SMALL = {
    "srcnn": {},
    "espcn": {},
    "edsr": {"channels": 8, "blocks": 1},
    "rdn": {"channels": 8, "blocks": 2, "layers": 2},
    "dbpn": {"channels": 8, "projections": 1},
    "gmfn": {"channels": 8, "blocks": 2, "steps": 2},
    "tdan": {"channels": 8, "blocks_before": 1, "blocks_after": 1},
    "srgan": {"channels": 8, "blocks": 1, "disc_channels": 4},
    "bsrgan": {"channels": 8, "blocks": 1, "growth": 4, "disc_channels": 4},
    "esrgan": {"channels": 8, "blocks": 1, "growth": 4, "disc_channels": 4},
}
NAMES = list(SMALL)
GANS = ["srgan", "bsrgan", "esrgan"]

#: learned parameters at the reference size; Table VII's figure in the comment
FULL_SIZE_PARAMS = {
    "srcnn": 15_841,  # 15.84 K
    "espcn": 22_729,  # printed 54.75 M: Params and FLOPs swapped (docs/reference.md §6.1)
    "edsr": 389_025,  # 0.39 M
    "rdn": 22_305_729,  # 22.31 M
    "dbpn": 1_963_594,  # 1.96 M
    "gmfn": 2_796_518,  # 2.80 M
    "tdan": 584_833,  # 0.59 M (0.585 M rounded)
    "srgan": 1_552_193,  # generator only; see test_gan_sizes_add_up_to_table_vii
    "bsrgan": 11_659_713,
    "esrgan": 16_695_681,
}
#: VGG19 up to conv5_4 (layer '34', the perceptual loss's network), 3 input channels
VGG19_TO_CONV5_4 = 20_024_384


def small(name, **kw):
    return models.get_model(name, **{**SMALL[name], **kw})


@pytest.fixture(scope="module")
def sim_windows():
    windows, frame_index, _ = eval_windows(simulate(1, seed=3))
    return torch.from_numpy(windows), torch.from_numpy(frame_index)


@pytest.mark.parametrize("name", NAMES)
def test_maps_of_simulated_windows_have_the_interface_shape_and_are_finite(name, sim_windows):
    torch.manual_seed(0)
    model = small(name).eval()
    with torch.inference_mode():
        maps, aux = model(*sim_windows)
    assert maps.shape == (16, 33, 33) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert aux == {}


@pytest.mark.parametrize("name", NAMES)
def test_learned_parameters_at_the_reference_size(name):
    assert count_params(models.get_model(name)) == FULL_SIZE_PARAMS[name]


@pytest.mark.parametrize(("name", "table_vii"), [("srgan", 35.31e6), ("bsrgan", 36.06e6),
                                                  ("esrgan", 50.45e6)])
def test_gan_sizes_add_up_to_table_vii(name, table_vii):
    """Table VII counts generator + discriminator + the perceptual loss's VGG19."""
    model = models.get_model(name)
    total = count_params(model) + count_params(model.make_discriminator()) + VGG19_TO_CONV5_4
    assert round(total / 1e4) == round(table_vii / 1e4)


@pytest.mark.parametrize("name", NAMES)
def test_weights_round_trip_keeps_config_parameters_and_maps(name, tmp_path, sim_windows):
    torch.manual_seed(0)
    model = small(name).eval()
    path = tmp_path / f"{name}.pt"
    save_weights(path, model, name, model.config, {"epochs": 0})
    loaded, meta = load_weights(path)
    assert meta["config"] == model.config == loaded.config
    assert json.loads(path.with_suffix(".json").read_text())["model"] == name
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(*sim_windows)[0], model(*sim_windows)[0])


@pytest.mark.parametrize("name", NAMES)
def test_macs_of_one_window_are_counted(name, sim_windows):
    window = sim_windows[0][0].numpy()
    assert count_macs(small(name), window, 2) > 0


@pytest.mark.parametrize(("name", "table_vii"), [("srcnn", "0.35 G"), ("espcn", "54.75 M"),
                                                  ("dbpn", "4.75 G"), ("rdn", "53.97 G")])
def test_macs_of_twenty_frames_match_table_vii(name, table_vii, sim_windows):
    """Table VII's FLOPs are the MACs of one forward over a 20-frame batch (docs/reference.md
    §6.3): 20 middle frames for a single-frame model."""
    value, unit = table_vii.split()
    macs = 20 * count_macs(models.get_model(name), sim_windows[0][0].numpy(), 2)
    assert f"{macs / {'M': 1e6, 'G': 1e9}[unit]:.2f}" == value


def test_tdan_macs_of_a_trajectory_match_table_vii():
    """2.179 G MACs per 20-frame trajectory (the README's figure) without the products of the
    deformable convolutions, which the reference's counter skips (docs/reference.md §6.3)."""
    model = models.get_model("tdan").eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.forward_sequences(torch.rand(1, 20, 11, 11) * 200, torch.zeros(1, dtype=torch.long))
    dcn = 4 * 64 * 32 * (32 * 9) * 121  # 4 DCNs × 64 alignments, 32×288 products per LR pixel
    assert f"{(counter.get_total_flops() // 2 - dcn) / 1e9:.3f}" == "2.179"


@pytest.mark.parametrize("name", GANS)
def test_discriminator_is_apart_from_the_unmixer(name):
    model = small(name)
    params, keys = count_params(model), set(model.state_dict())
    critic = model.make_discriminator()
    assert count_params(model) == params and set(model.state_dict()) == keys
    fake = (torch.rand(2, 3, 33, 33) * 200).requires_grad_()
    real = torch.rand(2, 3, 33, 33) * 200
    critic.generator_loss(fake, real).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())
    critic.discriminator_loss(fake.detach(), real).backward()
    assert all(p.grad is not None for p in critic.parameters())


def train_config(name, data_dir, out, steps):
    """Reduced model, every loss term of the recipes (``l1`` and ``gan`` for GANs, ``align``
    for TDAN); MSE kept in the GANs' loss so that a few steps visibly lower it."""
    gan = name in GANS
    return TrainConfig(
        model=name, model_config=SMALL[name], data=str(data_dir), target="gt",
        loss_weights={"reg": 1.0, "l1": 0.1, "gan": 0.1} if gan else {"reg": 1.0, "align": 0.01},
        lr=3e-3, weight_decay=0.0, batch_trajectories=2, sequence_length=20, epochs=steps,
        val_every_steps=1000, checkpoint_every_steps=1000, threads=1, out=str(out),
    )


@pytest.mark.parametrize("name", NAMES)
def test_smoke_training_lowers_the_pixel_loss(name, data_dir, tmp_path):
    """A few steps on 2 trajectories (1 step per epoch); GANs also step their discriminator."""
    torch.manual_seed(0)
    trainer = Trainer(train_config(name, data_dir, tmp_path, steps=12), progress=False)
    critic_before = None
    if trainer.critic is not None:
        critic_before = [p.detach().clone() for p in trainer.critic.parameters()]
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reg" in r]
    losses = [r["reg"] for r in steps]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.95 * np.mean(losses[:3])
    if critic_before is not None:
        assert all({"disc", "gan", "l1"} <= set(r) for r in steps)
        after = list(trainer.critic.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(critic_before, after, strict=True))
        assert "critic" in torch.load(tmp_path / "last.ckpt", weights_only=False)


def test_gan_resume_continues_the_same_run(data_dir, tmp_path):
    """The discriminator, its optimiser and its spectral-norm state live in the checkpoint."""
    full = Trainer(train_config("bsrgan", data_dir, tmp_path / "full", steps=4), progress=False)
    full.run()
    part = Trainer(train_config("bsrgan", data_dir, tmp_path / "part", steps=2), progress=False)
    part.run()
    resumed = Trainer(train_config("bsrgan", data_dir, tmp_path / "part", steps=4),
                      progress=False)
    resumed.resume(tmp_path / "part" / "last.ckpt")
    resumed.run()
    for a, b in zip([*full.model.parameters(), *full.critic.parameters()],
                    [*resumed.model.parameters(), *resumed.critic.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gmfn_faithful_scores_the_first_feedback_step(sim_windows):
    """faithful = the reference's first-step output; the default is the last step's."""
    torch.manual_seed(0)
    corrected = small("gmfn").eval()
    faithful = small("gmfn", faithful=True).eval()
    one_step = small("gmfn", steps=1).eval()
    faithful.load_state_dict(corrected.state_dict())
    one_step.load_state_dict(corrected.state_dict())
    with torch.inference_mode():
        a, b, c = (m(*sim_windows)[0] for m in (corrected, faithful, one_step))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, c)


def test_edsr_faithful_multiplies_the_grey_levels_by_255():
    torch.manual_seed(0)
    corrected, faithful = small("edsr"), small("edsr", faithful=True)
    faithful.load_state_dict(corrected.state_dict())
    lr = torch.rand(2, 1, 11, 11) * 200
    with torch.inference_mode():
        torch.testing.assert_close(faithful.upscale(lr), corrected.upscale(lr * 255) / 255)


def test_tdan_centre_slot_is_the_window_middle_frame_unless_faithful():
    torch.manual_seed(0)
    frames = torch.rand(2, 9, 11, 11) * 200
    corrected = small("tdan").eval()
    faithful = small("tdan", faithful=True).eval()
    with torch.inference_mode():
        slots = corrected.slots(frames)
        faithful_slots = faithful.slots(frames)
    assert slots.shape == (2, 5, 5, 11, 11)
    torch.testing.assert_close(slots[:, :, 2], frames[:, 2:7])
    torch.testing.assert_close(faithful_slots[:, :, 2], frames[:, 4:5].expand(-1, 5, -1, -1))


def test_tdan_align_loss_only_in_training():
    model = small("tdan").train()
    _, aux = model(torch.rand(2, 5, 11, 11) * 200, torch.tensor([2, 3]))
    assert set(aux) == {"align"} and torch.isfinite(aux["align"])


def test_deform_groups_are_separate_single_group_convolutions():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64)
    offset = torch.randn(2, 2 * 18, 6, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)
    per_group = sum(deform_conv2d(x[:, 2 * k:2 * k + 2], offset[:, 18 * k:18 * k + 18],
                                  weight[:, 2 * k:2 * k + 2]) for k in range(2))
    torch.testing.assert_close(deform_conv2d(x, offset, weight, deform_groups=2), per_group)
