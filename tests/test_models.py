"""Model interface, DeRefNet structure, deformable conv, weights files and the registry."""

import json

import numpy as np
import pytest
import torch
from test_toolkit_sr import SMALL as SR_SMALL
from test_toolkit_unfolding import SMALL as TOOLKIT_SMALL

import models
from models.harness import count_params
from models.layers.deform import deform_conv2d
from models.layers.narrow import conv3x3
from models.multiframe.derefnet import DeRefNet
from models.registry import model_builder
from models.train import _loss
from models.weights import WeightsError, load_model, load_weights, save_weights

torch.set_num_threads(1)
LEARNED = ["derefnet", "fastunmix", *SR_SMALL]


def small(name):
    cfg = {"derefnet": {"layers": 2, "channels": 8, "res_blocks": 1},
           "fastunmix": {"channels": 8, "blocks": 1, "hr_channels": 4}, **SR_SMALL,
           **TOOLKIT_SMALL}[name]
    return models.get_model(name, **cfg)


def windows(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 5, 11, 11, generator=g) * 200, torch.arange(b) + 2


@pytest.mark.parametrize("name", LEARNED + ["ista"])
def test_output_shapes(name):
    model = (small(name) if name in LEARNED else models.get_model(name)).eval()
    with torch.inference_mode():
        maps, aux = model(*windows())
    assert maps.shape == (3, 33, 33)
    assert maps.dtype == torch.float32
    assert aux == {}


@pytest.mark.parametrize("name", LEARNED)
def test_bad_input_shape_is_a_clear_error(name):
    with pytest.raises(ValueError, match=r"\(B, 5, 11, 11\)"):
        small(name)(torch.zeros(2, 4, 11, 11), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("name", LEARNED)
def test_gradients_reach_every_parameter(name):
    model = small(name).train()
    model.set_qinit(torch.rand(1089, 121) / 121)  # models that start from Qinit·y (SRCNN)
    # DeRefNet's offset convs start at zero (as in the reference), which blocks the gradient
    # to the attention module at step 0 only; give them a small value as after one update.
    for module in model.modules():
        if hasattr(module, "offset") and isinstance(module.offset, torch.nn.Conv2d):
            torch.nn.init.normal_(module.offset.weight, std=1e-3)
    maps, aux = model(*windows())
    loss = maps.pow(2).mean() + sum(aux.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("name", LEARNED + sorted(TOOLKIT_SMALL))
def test_training_step_keeps_every_tensor_on_the_model_device(name):
    """Forward, the training loss and backward on the "meta" device: any tensor a model or
    the loss creates without ``device=`` lands on the CPU and raises, as it would on CUDA.
    GANs also run their discriminator's losses."""
    model = small(name).to("meta").train()
    critic = model.make_discriminator()
    if critic is not None:
        critic.to("meta").train()
    frames = torch.empty(2, 8, 11, 11, device="meta")
    start = torch.zeros(2, dtype=torch.int64, device="meta")
    target = torch.empty(2, 4, 33, 33, device="meta")
    weights = {"reg": 1.0, "cons": 0.1, "align": 0.1, "l1": 0.1, "gan": 0.1}
    loss, _ = _loss(model.forward_sequences, frames, start, target, weights, critic=critic)
    loss.backward()
    assert loss.device.type == "meta"
    if critic is not None:
        critic.discriminator_loss(target, target).backward()


def test_derefnet_reference_size_and_losses():
    model = DeRefNet()
    assert count_params(model) == 1_482_879  # docs/reference.md §4.8 (from the reference code)
    model.train()
    _, aux = model(*windows(2))
    assert set(aux) == {"cons", "align"}
    assert all(torch.isfinite(v) for v in aux.values())


@pytest.mark.parametrize("name", ["derefnet", "tdan"])  # the models that override it
def test_forward_sequences_equals_per_window_forward(name):
    torch.manual_seed(0)
    model = small(name).eval()
    frames = torch.rand(2, 8, 11, 11) * 200
    start = torch.tensor([0, 6])
    with torch.inference_mode():
        seq_maps, _ = model.forward_sequences(frames, start)
        idx = torch.arange(4)[:, None] + torch.arange(5)[None]
        win = frames[:, idx].reshape(8, 5, 11, 11)
        mid = (start[:, None] + torch.arange(4)[None] + 2).reshape(-1)
        win_maps, _ = model(win, mid)
    torch.testing.assert_close(seq_maps.reshape(8, 33, 33), win_maps, rtol=1e-4, atol=1e-3)


def direct_deform_conv(x, offset, weight):
    """Deformable conv from the definition: explicit bilinear sampling per tap and pixel."""
    b, c, h, w = x.shape
    c_out = weight.shape[0]
    out = torch.zeros(b, c_out, h, w, dtype=x.dtype)

    def sample(n, ch, r, q):
        r0, q0 = int(np.floor(r)), int(np.floor(q))
        val = 0.0
        for rr, wr in ((r0, 1 - (r - r0)), (r0 + 1, r - r0)):
            for qq, wq in ((q0, 1 - (q - q0)), (q0 + 1, q - q0)):
                if 0 <= rr < h and 0 <= qq < w:
                    val += wr * wq * float(x[n, ch, rr, qq])
        return val

    for n in range(b):
        for i in range(h):
            for j in range(w):
                for k in range(9):
                    ki, kj = divmod(k, 3)
                    r = i - 1 + ki + float(offset[n, 2 * k, i, j])
                    q = j - 1 + kj + float(offset[n, 2 * k + 1, i, j])
                    vals = torch.tensor([sample(n, ch, r, q) for ch in range(c)], dtype=x.dtype)
                    out[n, :, i, j] += weight[:, :, ki, kj] @ vals
    return out


def test_deform_conv_matches_direct_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)
    offset = 1.5 * torch.randn(2, 18, 6, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(deform_conv2d(x, offset, weight),
                               direct_deform_conv(x, offset, weight))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
def test_deform_conv_inference_kernel_matches_the_differentiable_path(groups, threads):
    """The compiled inference kernel (no grad; serial on one torch thread, numba's threads
    otherwise) and grid_sample (grad) give the same output, offsets reaching past the border
    included."""
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(3, 4, 7, 6, generator=g)
    offset = 2.5 * torch.randn(3, groups * 18, 7, 6, generator=g)
    weight = torch.randn(5, 4, 3, 3, generator=g)
    bias = torch.randn(5, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            fast = deform_conv2d(x, offset, weight, bias, deform_groups=groups)
    finally:
        torch.set_num_threads(before)
    slow = deform_conv2d(x.requires_grad_(), offset, weight, bias, deform_groups=groups)
    assert slow.grad_fn is not None and fast.grad_fn is None
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)


def test_deform_conv_with_zero_offsets_is_a_plain_conv():
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    got = deform_conv2d(x, torch.zeros(1, 18, 7, 7, dtype=torch.float64), weight)
    torch.testing.assert_close(got, torch.nn.functional.conv2d(x, weight, padding=1))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_channels,bias", [(1, False), (1, True), (2, True)])
def test_narrow_conv_matches_conv2d(out_channels, bias, channels_last):
    """The matmul-and-shift path of 1–2 output channels (no grad, float32 CPU) gives
    F.conv2d's output, borders included; with a gradient it is F.conv2d itself."""
    g = torch.Generator().manual_seed(out_channels)
    x = torch.randn(3, 5, 7, 6, generator=g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, 5, 3, 3, generator=g)
    b = torch.randn(out_channels, generator=g) if bias else None
    expected = torch.nn.functional.conv2d(x, weight, b, padding=1)
    with torch.no_grad():
        fast = conv3x3(x, weight, b)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    with_grad = conv3x3(x.requires_grad_(), weight, b)
    assert with_grad.grad_fn is not None
    torch.testing.assert_close(with_grad.detach(), expected)


def test_narrow_conv_leaves_flop_counts_to_conv2d():
    """Under torch's FLOP counter the narrow convs take F.conv2d, so MACs stay the model's."""
    from torch.utils.flop_counter import FlopCounterMode
    conv = torch.nn.Conv2d(4, 1, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        conv3x3(x, conv.weight)
    assert counter.get_total_flops() == 2 * 2 * 25 * 4 * 9


def test_weights_round_trip_with_metadata(tmp_path):
    model = small("fastunmix")
    path = tmp_path / "w.pt"
    meta = save_weights(path, model, "fastunmix", model.config,
                        {"epochs": 1.5, "val": {"mAP": 0.5}})
    loaded, meta2 = load_weights(path)
    assert meta2 == meta == json.loads(path.with_suffix(".json").read_text())
    assert meta2["epochs"] == 1.5 and len(meta2["sha256"]) == 64
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_corrupt_weights_are_refused(tmp_path):
    model = small("fastunmix")
    path = tmp_path / "w.pt"
    save_weights(path, model, "fastunmix", model.config, {})
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(WeightsError, match="sha256"):
        load_weights(path)


@pytest.mark.parametrize("sidecar", [b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_a_broken_metadata_sidecar_names_the_file(tmp_path, sidecar):
    model = small("fastunmix")
    path = tmp_path / "w.pt"
    save_weights(path, model, "fastunmix", model.config, {})
    path.with_suffix(".json").write_bytes(sidecar)
    with pytest.raises(WeightsError, match=r"w\.json: (not a readable JSON|the metadata must)"):
        load_weights(path)


def test_missing_weights_name_the_fix(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_model("fastunmix", tmp_path / "nope.pt")


def test_registry_lists_models_and_rejects_unknown_names():
    assert {"derefnet", "fastunmix", "ista"} <= set(models.list_models())
    with pytest.raises(ValueError, match="registered models: .*derefnet"):
        models.get_model("no-such-model")


def test_every_registered_model_imports_and_lives_in_its_family_package():
    for name, entry in models.MODELS.items():
        builder = model_builder(name)
        assert callable(builder), name
        assert entry.target.startswith(f"models.{entry.family}."), (name, entry)


def test_evaluation_shares_frame_features_without_changing_the_maps():
    """DeRefNet's forward_sequences (shared per-frame features) equals the base class's sliding
    window over forward(); predict_maps, which feeds whole trajectories, equals both."""
    from models.base import UnmixingModel
    from models.harness import predict_maps
    from models.protocol import eval_windows
    from sim.dataset import simulate

    torch.manual_seed(0)
    model = small("derefnet").eval()
    ds = simulate(3, seed=5)
    frames = torch.from_numpy(ds.trajectory_images().astype(np.float32))
    start = torch.zeros(3, dtype=torch.int64)
    with torch.inference_mode():
        shared, _ = model.forward_sequences(frames, start)
        sliding, _ = UnmixingModel.forward_sequences(model, frames, start)
        windows, frame_index, _ = eval_windows(ds)
        plain, _ = model(torch.from_numpy(windows), torch.from_numpy(frame_index))
    assert shared.shape == (3, 16, 33, 33)
    np.testing.assert_allclose(shared.numpy(), sliding.numpy(), rtol=1e-4, atol=1e-3)
    predicted = predict_maps(model, ds, batch_size=32).maps
    assert predicted.shape == (48, 33, 33)
    np.testing.assert_allclose(predicted, plain.numpy(), rtol=1e-4, atol=1e-3)


# small configurations of the two models with a grid head: (name, config, trunk blocks)
GRID_MODELS = [("fastunmix", {"channels": 8, "blocks": 3, "hr_channels": 4}, "blocks"),
               ("derefnet", {"layers": 1, "channels": 8, "res_blocks": 3}, "res_blocks")]


@pytest.mark.parametrize(("name", "small", "blocks"), GRID_MODELS)
def test_only_a_model_with_a_grid_head_switches_its_output(name, small, blocks):
    plain = models.get_model(name, **small)
    with pytest.raises(ValueError, match=r"has the outputs \('map',\), not 'grid'"):
        plain.set_output("grid")
    model = models.get_model(name, **small, grid_head=True)
    windows, index = torch.rand(3, 5, 11, 11) * 200, torch.full((3,), 2)
    maps, _ = model.eval()(windows, index)
    model.set_output("grid")
    grid, _ = model(windows, index)
    assert grid.shape == maps.shape == (3, 33, 33) and not torch.equal(grid, maps)
    model.set_output("map")
    torch.testing.assert_close(model(windows, index)[0], maps)


@pytest.mark.parametrize(("name", "small", "blocks"), GRID_MODELS)
def test_a_grid_branch_starts_as_a_copy_of_the_trunk(name, small, blocks):
    """init_missing copies the trunk's last blocks (and fastunmix's upsampling) into the
    branch: the grid output is then the plain head's; the splat map never depends on it."""
    torch.manual_seed(0)
    plain = models.get_model(name, **small, grid_head=True).eval()
    branched = models.get_model(name, **small, grid_head=True, grid_branch=2).eval()
    missing, unexpected = branched.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("grid_head.branch.") for k in missing)
    windows, index = torch.rand(3, 5, 11, 11) * 200, torch.full((3,), 2)
    plain.set_output("grid")
    branched.set_output("grid")
    assert not torch.allclose(branched(windows, index)[0], plain(windows, index)[0])
    branched.init_missing(missing)
    torch.testing.assert_close(branched(windows, index)[0], plain(windows, index)[0])
    with torch.no_grad():
        branched.grid_head.branch[0].conv1.weight.add_(1.0)
    branched.set_output("map")
    plain.set_output("map")
    torch.testing.assert_close(branched(windows, index)[0], plain(windows, index)[0])
    with pytest.raises(ValueError, match=f"grid_branch must be in 0 … {blocks}"):
        models.get_model(name, **small, grid_head=True, grid_branch=4)


def test_derefnet_grid_output_shares_frame_features_and_needs_the_frames():
    """Whole sequences (frame features computed once) give each window's grid map as the
    window alone does; the per-window entry the live unmixer uses needs the frames for it."""
    torch.manual_seed(0)
    model = models.get_model("derefnet", layers=1, channels=8, res_blocks=2, grid_head=True,
                             grid_branch=1).eval()
    model.set_output("grid")
    frames = torch.rand(2, 7, 11, 11) * 200
    start = torch.tensor([0, 5])
    with torch.no_grad():
        sequences = model.forward_sequences(frames, start)[0]  # (2, 3, 33, 33)
        for i in range(2):
            for w in range(3):
                alone = model(frames[i, None, w:w + 5], start[i, None] + w + 2)[0]
                torch.testing.assert_close(sequences[i, w], alone[0], rtol=1e-4, atol=1e-3)
        features = model.frame_features(frames[0, :5])[0][None]
        with pytest.raises(ValueError, match="grid output reads the window's frames"):
            model.window_maps(features, torch.tensor([2]))


def test_grid_flips_average_the_four_flips_outside_autograd():
    """With grid_flips the grid output is flip-equivariant at inference (the HR grid flips
    onto itself); a training step (autograd on) takes the single pass."""
    torch.manual_seed(0)
    model = models.get_model("fastunmix", channels=8, blocks=1, hr_channels=4, grid_head=True,
                             grid_flips=True)
    model.set_output("grid")
    windows, index = torch.rand(2, 5, 11, 11) * 200, torch.full((2,), 2)
    with torch.no_grad():
        averaged = model(windows, index)[0]
        single = model._grid_maps(windows)
        for dims in ((-1,), (-2,), (-2, -1)):
            flipped = model(windows.flip(dims), index)[0]
            torch.testing.assert_close(flipped, averaged.flip(dims))
    assert not torch.allclose(averaged, single)
    torch.testing.assert_close(model(windows, index)[0], single)


def test_the_grid_head_reads_the_frames_through_phi():
    """Same features and map, other frames: the grid map changes, and only through the two
    data-fidelity inputs Φᵀ(y − Φx)."""
    from models.layers.grid_head import GridHead
    from sim.phi import phi_matrix

    torch.manual_seed(0)
    head = GridHead(4)
    phi = torch.tensor(phi_matrix(), dtype=torch.float32)
    features, maps = torch.rand(2, 4, 33, 33), torch.rand(2, 33, 33) * 50
    rendered = (maps.reshape(2, -1) @ phi.T).view(2, 1, 11, 11).expand(2, 5, 11, 11)
    a = head(features, maps, rendered, phi)
    b = head(features, maps, rendered + 20.0, phi)
    assert a.shape == (2, 33, 33) and not torch.allclose(a, b)
    zero = GridHead(4)
    zero.load_state_dict(head.state_dict())
    with torch.no_grad():  # the fidelity channels (the last two inputs) read nothing
        zero.conv1.weight[:, -2:] = 0
    torch.testing.assert_close(zero(features, maps, rendered, phi),
                               zero(features, maps, rendered + 20.0, phi))


def test_fastunmix_psf_input_reads_the_stated_psf_and_starts_from_weights_without_it():
    import torch

    from models.multiframe.fastunmix import FastUnmixer

    torch.manual_seed(0)
    plain = FastUnmixer(channels=8, blocks=1, hr_channels=4)
    cond = FastUnmixer(channels=8, blocks=1, hr_channels=4, psf_input=True)
    cond.load_state_dict(cond.adapt_state(plain.state_dict()))
    windows = torch.rand(3, 5, 11, 11) * 200
    index = torch.full((3,), 2)
    cond.set_psf(0.7)
    torch.testing.assert_close(cond(windows, index)[0], plain(windows, index)[0])
    with torch.no_grad():
        cond.head.weight[:, -1] = 1.0  # the σ channel now matters
    a = cond(windows, index)[0]
    cond.set_psf(torch.tensor([0.7, 0.7, 0.4]))  # one σ per window
    b = cond(windows, index)[0]
    torch.testing.assert_close(a[:2], b[:2])
    assert not torch.allclose(a[2], b[2])
    assert plain.adapt_state(plain.state_dict()) is not None


def test_the_general_fastunmix_weights_take_the_psf_of_their_range():
    from models.weights import load_model, psf_mismatch

    model, meta = load_model("fastunmix", "models/weights/fastunmix-general.pt")
    assert model.psf_input and meta["psf_range"] == [0.35, 0.8]
    assert psf_mismatch("fastunmix", meta, 0.7) is None
    assert "0.35–0.8" in psf_mismatch("fastunmix", meta, 0.9)
    window = torch.zeros(1, 5, 11, 11)
    window[:, :, 5, 5] = 200.0
    maps = []
    for sigma in (0.4, 0.7):
        model.set_psf(sigma)
        with torch.no_grad():
            maps.append(model(window, torch.full((1,), 2))[0])
    assert not torch.allclose(maps[0], maps[1])  # the σ input changes the answer
