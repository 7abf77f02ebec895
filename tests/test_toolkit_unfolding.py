"""Table VII toolkit: BID, the learned-ISTA family and the CNN unfoldings (docs/reference.md §5).

Shapes and finiteness on simulated windows, learned-parameter counts and MACs against
Table VII, weights round trips, a smoke training per learned model, the faithful modes
(BID's two bugs, the LISTA family's broadcast target, RPCANet's stale D) and the numerics the
models rely on (shrinkage, Φ as convolutions, USRNet's data step).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import models
from models.classical.bid import BidUnmixer, bid_image, bid_psf
from models.config import load_config
from models.harness import count_macs, count_params
from models.layers.gaussian import gaussian_kernel
from models.layers.shrinkage import hard_threshold, soft_threshold, support_selection
from models.protocol import eval_windows
from models.train import TrainConfig, Trainer, _loss
from models.weights import load_model, load_weights, save_weights
from sim.dataset import simulate
from sim.phi import fit_qinit, phi_matrix
from sim.render import render

torch.set_num_threads(1)
CONFIGS = Path(__file__).parents[1] / "configs" / "models"

#: Reduced model configs for fast tests (also used by tests/test_models.py's meta-device test).
SMALL = {
    "lista": {"layers": 2},
    "liht": {"layers": 2},
    "lamp": {"layers": 2},
    "tilista": {"layers": 2},
    "istanet": {"layers": 2, "channels": 8},
    "istanet_plus": {"layers": 2, "channels": 8},
    "istanet_pp": {"layers": 2, "channels": 8},
    "fistanet": {"iterations": 2, "channels": 8},
    "usrnet": {"iterations": 2, "channels": [4, 8, 8, 8], "blocks": 1, "hyper_channels": 8},
    "rpcanet": {"stages": 2, "slayers": 1, "llayers": 1, "mlayers": 1, "channels": 8},
}
LEARNED = sorted(SMALL)
ALL = ["bid", *LEARNED]
SPARSE = ["lista", "liht", "lamp", "tilista"]

#: Auxiliary losses each model returns in training mode.
AUX = {"istanet": {"cons"}, "istanet_plus": {"cons"}, "fistanet": {"cons", "sparsity"},
       "rpcanet": {"merge"}}

#: Learned parameters at the reference sizes. Where the comment gives a Table VII figure, ours
#: reproduces it (docs/reference.md §5, §6.3); otherwise the model's docstring explains why not.
PARAMS = {
    "bid": 0,
    "lista": 21_100_464,  # 21.10 M
    "liht": 21_100_464,  # 21.10 M
    "lamp": 2_125_728,  # 2.13 M
    "tilista": 2_125_744,  # Table VII: 2.22 M, not what the reference code builds
    "istanet": 171_090,  # 0.17 M with 9 layers (docs/reference.md §8 #12)
    "istanet_plus": 336_978,  # Table VII: 0.38 M, not what the reference code builds
    "istanet_pp": 760_220,  # 0.76 M
    "fistanet": 37_607,  # 74 599 (74.60 K) less the reference's 4 unused convs (4 × 9 248)
    "usrnet": 1_068_736,  # 1.07 M
    "rpcanet": 679_896,  # 0.68 M
}

#: Table VII FLOPs (MACs of one forward over a 20-frame batch, docs/reference.md §6.3), as
#: printed (2 decimals) with their unit. LAMP's printed "86.97 G" is a typo for M (§6.1).
TABLE_VII_MACS = {
    "lista": (0.42, 1e9), "liht": (0.42, 1e9), "lamp": (86.97, 1e6), "tilista": (86.97, 1e6),
    "istanet": (4.09, 1e9), "istanet_plus": (7.70, 1e9), "fistanet": (6.02, 1e9),
    "istanet_pp": (16.54, 1e9),
}
#: Models whose reference computes ΦᵀΦ (1089·121·1089 MACs) inside forward; ours precompute it.
PHITPHI_IN_FORWARD = {"istanet", "istanet_plus", "fistanet"}
#: MACs per window of the models whose Table VII figure we do not reproduce: FlopCounterMode
#: does not count RPCANet's batch norms (fvcore's 4 per element make the 14.81 G exactly) nor
#: USRNet's FFTs and resizes (11.24 G against 11.26 G); BID's 1 000 iterations × 9 801 MACs of
#: its 3×3 convolution (Table VII's 10.89 M per image also counts the 1 089 subtractions).
OTHER_MACS = {"rpcanet": 734_030_649, "usrnet": 562_209_280, "bid": 9_801_000}

#: The recipes' loss weights (configs/models/<name>.yaml).
LOSS_WEIGHTS = {"istanet": {"reg": 1.0, "cons": 0.01}, "istanet_plus": {"reg": 1.0, "cons": 0.01},
                "fistanet": {"reg": 1.0, "l1": 0.1, "cons": 0.01, "sparsity": 0.001},
                "rpcanet": {"reg": 0.9, "merge": 0.09}}


@pytest.fixture(scope="module")
def sim():
    """Two simulated trajectories, their Qinit and 4 evaluated windows."""
    ds = simulate(2, seed=3)
    windows, frame_index, _ = eval_windows(ds)
    pick = [0, 7, 16, 31]
    return (fit_qinit(ds.gt_maps()), torch.from_numpy(windows[pick]),
            torch.from_numpy(frame_index[pick]))


def small(name: str):
    return models.get_model(name, **SMALL.get(name, {}))


# -- every model ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_reference_size_maps_are_finite_on_simulated_windows(name, sim):
    qinit, windows, frame_index = sim
    model = models.get_model(name)
    model.set_qinit(qinit)
    with torch.inference_mode():
        maps, aux = model.eval()(windows, frame_index)
    assert maps.shape == (4, 33, 33) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and aux == {}
    if model.trainable:
        maps, aux = model.train()(windows, frame_index)
        assert set(aux) == AUX.get(name, set())
        assert all(torch.isfinite(v) and v.ndim == 0 for v in aux.values())


@pytest.mark.parametrize("name", ALL)
def test_learned_parameter_count(name):
    assert count_params(models.get_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(TABLE_VII_MACS))
def test_macs_reproduce_table_vii(name, sim):
    _, windows, frame_index = sim
    macs = count_macs(models.get_model(name), windows[0].numpy(), int(frame_index[0]))
    phitphi = 1089 * 121 * 1089 if name in PHITPHI_IN_FORWARD else 0
    printed, unit = TABLE_VII_MACS[name]
    assert round((20 * macs + phitphi) / unit, 2) == printed


@pytest.mark.parametrize("name", sorted(OTHER_MACS))
def test_macs_of_the_other_models(name, sim):
    _, windows, frame_index = sim
    model = models.get_model(name)
    assert count_macs(model, windows[0].numpy(), int(frame_index[0])) == OTHER_MACS[name]


@pytest.mark.parametrize("name", ALL)
def test_weights_round_trip_rebuilds_the_same_model(name, sim, tmp_path):
    qinit, windows, frame_index = sim
    model = models.get_model(name, **SMALL.get(name, {"faithful": True}))
    model.set_qinit(qinit)
    save_weights(tmp_path / "w.pt", model, name, model.config, {})
    loaded, meta = load_weights(tmp_path / "w.pt")
    assert loaded.config == model.config == meta["config"]
    assert type(loaded) is type(model)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(windows, frame_index)[0],
                                   model.eval()(windows, frame_index)[0])


@pytest.mark.parametrize("name", LEARNED)
def test_smoke_training_through_the_trainer_lowers_the_loss(name, data_dir, tmp_path):
    cfg = TrainConfig(model=name, model_config=SMALL[name], data=str(data_dir), target="gt",
                      loss_weights=LOSS_WEIGHTS.get(name, {"reg": 1.0}), lr=1e-2,
                      weight_decay=0.0, batch_trajectories=2, epochs=10, val_every_steps=1000,
                      checkpoint_every_steps=1000, threads=1, out=str(tmp_path))
    result = Trainer(cfg, progress=False).run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert 0.0 <= result["mAP"] <= 1.0
    assert set(LOSS_WEIGHTS.get(name, {"reg": 1.0})) <= set(rows[0])


@pytest.mark.parametrize("name", LEARNED)
def test_each_learned_model_has_a_recipe(name):
    cfg = load_config(TrainConfig, CONFIGS / f"{name}.yaml")
    assert cfg.model == name and not cfg.target_broadcast
    assert cfg.loss_weights == LOSS_WEIGHTS.get(name, {"reg": 1.0})


# -- BID --------------------------------------------------------------------------------------


def test_bid_psf_is_symmetric_and_faithful_reproduces_the_reference_grid():
    psf = bid_psf()
    np.testing.assert_array_equal(psf, psf.T)
    np.testing.assert_array_equal(psf, psf[::-1, ::-1])
    assert psf.argmax() == 4 and psf.sum() == pytest.approx(1.0)
    bad = bid_psf(faithful=True)  # taps at -2, -0.5, 1 (docs/reference.md §5.2, bug 1)
    np.testing.assert_array_equal(bad, gaussian_kernel([-2.0, -0.5, 1.0], 0.5))
    assert not np.array_equal(bad, bad[::-1, ::-1])


def test_bid_faithful_image_is_what_cv2_resize_makes_of_a_column():
    frame = (np.random.default_rng(0).random((11, 11)) * 255).astype(np.uint8)
    reference = cv2.resize(frame.reshape(121, 1), (11, 11), interpolation=cv2.INTER_LINEAR)
    frames = torch.tensor(frame[None], dtype=torch.float32)
    np.testing.assert_array_equal(bid_image(frames, faithful=True)[0].numpy(), reference)
    assert torch.equal(bid_image(frames), frames)


def test_bid_correct_and_faithful_differ():
    target = render(np.array([[5.0, 2.0, 235.0]]))  # lights LR pixel (5, 2), HR cell (16, 7)
    windows = torch.tensor(np.stack([target] * 5), dtype=torch.float32)[None]
    index = torch.tensor([2])
    correct, _ = BidUnmixer()(windows, index)
    faithful, _ = BidUnmixer(faithful=True)(windows, index)
    assert divmod(int(correct[0].argmax()), 33) == (16, 7)
    assert divmod(int(faithful[0].argmax()), 33) != (16, 7)
    assert (correct - faithful).abs().max() > 50
    model, meta = load_model("bid")  # not learned: usable without weights
    assert isinstance(model, BidUnmixer) and meta == {"model": "bid"}


def test_bid_stops_each_sample_on_its_residual():
    windows = torch.zeros(2, 5, 11, 11)
    windows[1, 2, 5, 5] = 200.0  # sample 0 (all zero) stops at once, sample 1 runs on
    model = BidUnmixer(max_iter=5)
    maps, _ = model(windows, torch.tensor([2, 2]))
    assert maps[0].abs().max() == 0
    alone, _ = model(windows[1:], torch.tensor([2]))
    torch.testing.assert_close(maps[1:], alone)


# -- learned-ISTA family ------------------------------------------------------------------------


def test_shrinkage_functions():
    v = torch.tensor([[-3.0, -0.5, 0.0, 0.5, 1.0, 3.0]])
    assert soft_threshold(v, 1.0).tolist() == [[-2.0, 0.0, 0.0, 0.0, 0.0, 2.0]]
    assert hard_threshold(v, 0.7).tolist() == [[-3.0, 0.0, 0.0, 0.0, 1.0, 3.0]]
    # top 40 %: the magnitudes above the 0.6-quantile (1.0) and θ skip the shrinkage
    torch.testing.assert_close(support_selection(v, 0.4, 40.0),
                               torch.tensor([[-3.0, -0.1, 0.0, 0.1, 0.6, 3.0]]))


def test_set_qinit_reinitialises_the_qinit_derived_weights(sim):
    qinit = torch.tensor(sim[0], dtype=torch.float32)
    phi = torch.tensor(phi_matrix(), dtype=torch.float32)
    lista, liht, tilista = (small(n) for n in ("lista", "liht", "tilista"))
    for model in (lista, liht, tilista):
        model.set_qinit(qinit)
    torch.testing.assert_close(lista.w[1], torch.eye(1089) - qinit @ phi)
    assert torch.equal(lista.b[0], qinit) and torch.equal(liht.b[1], qinit)
    assert torch.equal(liht.w[0], torch.eye(1089)) and torch.equal(tilista.w[1], qinit)
    assert lista.theta[0, 0].item() == pytest.approx(0.4 / (1.001 * 2.93029**2), rel=1e-4)


def test_broadcast_target_regresses_every_map_onto_every_frame():
    torch.manual_seed(0)
    model = small("lista").train()
    frames = torch.rand(2, 7, 11, 11) * 200
    start = torch.zeros(2, dtype=torch.int64)
    targets = torch.rand(2, 7, 33, 33) * 100  # one map per frame
    weights = {"reg": 1.0}
    maps, _ = model.forward_sequences(frames, start)  # (2, 3, 33, 33): frames 2 … 4
    per_window, _ = _loss(model.forward_sequences, frames, start, targets[:, 2:5], weights)
    broadcast, _ = _loss(model.forward_sequences, frames, start, targets, weights,
                         broadcast=True)
    torch.testing.assert_close(per_window, torch.mean((maps - targets[:, 2:5]) ** 2))
    pairs = torch.stack([torch.stack([(maps[:, i] - targets[:, j]) ** 2 for j in range(7)])
                         for i in range(3)])
    torch.testing.assert_close(broadcast, pairs.mean())
    # … which is the MSE to the sequence's mean map plus a constant (its spread)
    mean_map = targets.mean(dim=1, keepdim=True)
    spread = torch.mean((targets - mean_map) ** 2)
    torch.testing.assert_close(broadcast, torch.mean((maps - mean_map) ** 2) + spread)


def test_trainer_targets_per_window_or_per_frame(data_dir, tmp_path):
    batches = {}
    for broadcast in (False, True):
        cfg = TrainConfig(model="lista", model_config=SMALL["lista"], data=str(data_dir),
                          batch_trajectories=2, target_broadcast=broadcast, threads=1,
                          out=str(tmp_path / str(broadcast)))
        batches[broadcast] = Trainer(cfg, progress=False).next_batch()
    (frames, starts, per_window), (frames_b, starts_b, per_frame) = batches[False], batches[True]
    assert torch.equal(frames, frames_b) and torch.equal(starts, starts_b)
    assert per_window.shape == (2, 16, 33, 33) and per_frame.shape == (2, 20, 33, 33)
    assert torch.equal(per_frame[:, 2:18], per_window)


@pytest.mark.parametrize("name", SPARSE)
def test_faithful_recipe_differs_from_the_corrected_one_only_by_the_target(name):
    corrected = asdict(load_config(TrainConfig, CONFIGS / f"{name}.yaml"))
    faithful = asdict(load_config(TrainConfig, CONFIGS / f"{name}-faithful.yaml"))
    assert faithful.pop("target_broadcast") and not corrected.pop("target_broadcast")
    assert faithful.pop("out") != corrected.pop("out")
    assert faithful == corrected


# -- CNN unfoldings -----------------------------------------------------------------------------


def test_istanet_pp_applies_phi_and_phi_transpose_as_convolutions():
    model = small("istanet_pp")
    phi = torch.tensor(phi_matrix(), dtype=torch.float32)
    y, x = torch.rand(3, 121) * 200, torch.rand(3, 1, 33, 33) * 200
    torch.testing.assert_close(model.phit(y.view(3, 121, 1, 1)).flatten(1), y @ phi)
    phix = torch.nn.functional.conv2d(x, model.phi_kernels, stride=33).flatten(1)
    torch.testing.assert_close(phix, x.flatten(1) @ phi.T, rtol=1e-4, atol=1e-3)


def test_usrnet_data_step_interpolates_between_data_and_prior():
    model = small("usrnet")
    torch.manual_seed(0)
    y, x = torch.rand(2, 1, 11, 11) * 100, torch.rand(2, 1, 33, 33) * 100
    zero_filled = torch.zeros(2, 1, 33, 33)
    zero_filled[..., ::3, ::3] = y
    fbfy = model.fb.conj() * torch.fft.fft2(zero_filled)

    def step(alpha):
        return model.data_step(x, fbfy, torch.tensor(alpha).view(1, 1, 1, 1))

    blurred = torch.fft.ifft2(model.fb * torch.fft.fft2(step(1e-4))).real
    torch.testing.assert_close(blurred[..., ::3, ::3], y, rtol=0, atol=0.5)  # fits y
    torch.testing.assert_close(step(1e5), x, rtol=0, atol=0.01)  # stays at x


def test_rpcanet_faithful_feeds_every_stage_the_initial_d(sim):
    qinit, windows, frame_index = sim
    torch.manual_seed(0)
    corrected = small("rpcanet")
    corrected.set_qinit(qinit)
    faithful = models.get_model("rpcanet", **{**SMALL["rpcanet"], "faithful": True})
    faithful.load_state_dict(corrected.state_dict())
    maps_c, aux_c = corrected.train()(windows, frame_index)
    maps_f, aux_f = faithful.train()(windows, frame_index)
    assert not torch.allclose(maps_c, maps_f)
    (maps_f.pow(2).mean() + aux_f["merge"]).backward()
    first_merge = faithful.stages[0].merge[0].weight
    assert first_merge.grad is None  # its output is discarded, as in the reference


def test_istanet_plus_starts_at_the_ista_step_and_faithful_keeps_the_diverging_one():
    """ρ = 0.5 with ‖Φ‖₂² = 8.59 amplifies the top singular direction 3.3× per layer; the
    corrected start 1/‖Φ‖₂² keeps the first forward pass at the windows' scale."""
    windows, frame_index, _ = eval_windows(simulate(1, seed=5))
    x = torch.as_tensor(windows[:8], dtype=torch.float32)
    t = torch.as_tensor(frame_index[:8], dtype=torch.int64)
    lipschitz = float(np.linalg.norm(phi_matrix(), 2) ** 2)
    peaks = {}
    for faithful in (False, True):
        torch.manual_seed(0)
        model = models.get_model("istanet_plus", faithful=faithful).eval()
        steps = [layer.rho.item() for layer in model.layers]
        assert steps == pytest.approx([0.5 if faithful else 1 / lipschitz] * 9, rel=1e-5)
        with torch.no_grad():
            peaks[faithful] = float(model(x, t)[0].abs().max())
    assert peaks[False] < float(x.max()) < peaks[True] / 100
