"""Learned detectors (stages.irstd): shapes on odd frame sizes, a smoke training that learns,
selection through DetectorConfig with the shipped weights, named errors, torch-free top-hat."""

import subprocess
import sys

import numpy as np
import pytest

from models.weights import WeightsError
from stages.detection_metrics import truth_mask
from stages.detector import Detector, DetectorConfig, detect
from stages.scene import SceneConfig, SceneSimulator

torch = pytest.importorskip("torch")

from stages.irstd import infer, nets  # noqa: E402
from stages.irstd.data import normalise, sample_crops  # noqa: E402
from stages.irstd.losses import sls_loss, soft_iou_loss  # noqa: E402
from stages.irstd.train import DEFAULTS, init_heads, supervised_loss  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["mshnet", "dnanet"])
def test_shipped_architectures_map_odd_frames_to_full_resolution(kind):
    arch = DEFAULTS[kind]
    net = nets.build(kind, arch["widths"], arch["blocks"], arch["s2d"], arch["refine"]).eval()
    x, (h, w) = nets.pad_to_stride(torch.randn(1, 1, 100, 84), net.stride)
    assert (h, w) == (100, 84)
    assert x.shape[-2] % net.stride == 0 and x.shape[-1] % net.stride == 0
    with torch.inference_mode():
        out, sides = net(x, deep=True)
        assert net(x).shape == out.shape == x.shape
    assert len(sides) == len(arch["widths"]) - 1
    for i, s in enumerate(sides):  # MSHNet: coarser per decoder level; DNANet: full size
        factor = 2 ** i if kind == "mshnet" else 1
        assert s.shape[-2:] == (x.shape[-2] // factor, x.shape[-1] // factor)
    prob = infer.probability(np.random.default_rng(0).normal(20, 1, (100, 84)), net)
    assert prob.shape == (100, 84) and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1


def test_normalisation_does_not_depend_on_offset_or_gain():
    image = np.random.default_rng(1).normal(50, 2, (64, 64)).astype(np.float32)
    image[30:33, 30:33] += 100
    a, sigma_a = normalise(image)
    b, sigma_b = normalise(3 * image + 1000)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert sigma_b == pytest.approx(3 * sigma_a, rel=1e-4)


def test_losses_reward_the_truth():
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 10:13, 20:23] = 1
    good, bad = 20 * (2 * target - 1), torch.full_like(target, -20.0)
    bad[:, :, 2:5, 2:5] = 20
    for loss in (soft_iou_loss, lambda o, t: sls_loss(o, t, warm=True)):
        assert float(loss(good, target)) < 0.05 < 0.9 < float(loss(bad, target))


@pytest.mark.parametrize("kind", ["mshnet", "dnanet"])
def test_the_refinement_starts_as_the_identity(kind):
    torch.manual_seed(0)
    plain = nets.build(kind, (4, 8), 1, 2, refine=False).eval()
    refined = nets.build(kind, (4, 8), 1, 2, refine=True).eval()
    refined.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 1, 16, 24)
    with torch.inference_mode():
        torch.testing.assert_close(refined(x), plain(x))


@pytest.mark.parametrize("kind", ["mshnet", "dnanet"])
def test_a_short_training_lowers_the_loss(kind):
    config = SceneConfig(height=64, width=64, groups=3, min_separation=10, border=8)
    frames = [SceneSimulator(config, seed=s).step() for s in (5, 6)]
    images = np.stack([normalise(image)[0] for image, _ in frames])
    masks = np.stack([truth_mask(truth, image.shape, config.psf_sigma).astype(np.uint8)
                      for image, truth in frames])
    net = nets.build(kind, (4, 8), 1, 2)
    init_heads(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    x, y = map(torch.from_numpy, sample_crops(images, masks, 4, 32, rng, target_fraction=1))
    losses = []
    for _ in range(40):
        loss = supervised_loss(kind, net, x, y, warm=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


@pytest.mark.parametrize("kind", ["mshnet", "dnanet"])
def test_learned_kinds_find_a_bright_group_with_the_shipped_weights(kind):
    sim = SceneSimulator(SceneConfig(groups=3, scene="builtin", scene_amplitude=40.0), seed=77)
    image, truth = sim.step()
    config = DetectorConfig(kind=kind)
    blobs, mask = detect(image, config)
    assert blobs.shape[1] == 5 and mask.shape == image.shape and mask.dtype == bool
    centres = np.array([truth.group_targets(int(g))[:, :2].mean(0) for g in truth.group_ids])
    dist = np.linalg.norm(centres[:, None] - blobs[None, :, :2], axis=-1)
    assert np.all(dist.min(axis=1) < 1.5), "a group was missed"
    assert np.all(np.diff(blobs[:, 4]) <= 0), "blobs are sorted by SNR"
    assert np.all(blobs[:, 2] > 20) and np.all(blobs[:, 3] >= config.min_area)
    out = Detector(config).process(_frame(image))[0]
    assert len(out.blobs) == len(blobs)


def _frame(image):
    from stages.messages import Frame

    return Frame(seq=0, t_source_ns=0, image=image)


def test_a_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.pt"
    config = DetectorConfig(kind="dnanet", weights=str(missing))
    with pytest.raises(WeightsError, match="nope.pt"):
        detect(np.zeros((64, 64), np.float32), config)
    with pytest.raises(WeightsError, match="nope.pt"):
        Detector(config)


def test_weights_of_another_kind_are_refused(tmp_path):
    path = tmp_path / "w.pt"
    net = nets.build("mshnet", (4, 8), 1, 2)
    torch.save({"kind": "mshnet", "widths": [4, 8], "blocks": 1, "s2d": 2, "refine": True,
                "state_dict": net.state_dict()}, path)
    with pytest.raises(ValueError, match="mshnet"):
        infer.load("dnanet", str(path))
    assert infer.load("mshnet", str(path)).stride == 4


def test_config_checks_the_probability_threshold():
    with pytest.raises(ValueError, match="prob_threshold"):
        DetectorConfig(kind="mshnet", prob_threshold=1.0)


def test_the_tophat_path_does_not_import_torch():
    code = ("import sys, numpy as np\n"
            "from stages.detector import detect, DetectorConfig\n"
            "detect(np.zeros((32, 32)), DetectorConfig())\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
