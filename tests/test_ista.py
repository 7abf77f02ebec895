"""Classical ISTA baseline (docs/reference.md §5): recovery, per-sample stopping, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.classical.ista import IstaUnmixer, _phi_pinv_lipschitz, ista, soft_threshold
from models.metric import grid_detections
from models.registry import get_model
from models.weights import load_model
from sim.render import render


def operators():
    phi, pinv, lipschitz = _phi_pinv_lipschitz()
    return torch.tensor(phi), torch.tensor(pinv), lipschitz


def test_soft_threshold():
    v = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    assert soft_threshold(v, 1.0).tolist() == [-2.0, 0.0, 0.0, 0.0, 2.0]


def test_lipschitz_is_the_squared_spectral_norm_of_phi():
    _, _, lipschitz = _phi_pinv_lipschitz()
    # docs/reference.md §2.1: ‖Φ‖₂² = 8.5866
    assert lipschitz == pytest.approx(2.93029**2, rel=1e-5)


def test_recovers_a_single_on_grid_target_in_its_cell():
    image = render(np.array([[5.0, 2.0, 235.0]]))  # (11, 11): HR cell (16, 7)
    other = render(np.array([[1.0, 9.0, 235.0]]))  # neighbours must not matter
    windows = torch.tensor(np.stack([other, other, image, other, other]), dtype=torch.float32)
    model = IstaUnmixer()
    maps, aux = model(windows[None], torch.tensor([2]))
    assert aux == {} and maps.shape == (1, 33, 33) and maps.dtype == torch.float32
    m = maps[0].numpy()
    assert np.unravel_index(np.argmax(m), m.shape) == (16, 7)
    best = grid_detections(m)
    best = best[np.argmax(best[:, 2])]
    np.testing.assert_allclose(best[:2], [5.0, 2.0])
    assert best[2] > 70


def test_per_sample_stopping_equals_running_each_sample_alone():
    phi, pinv, lipschitz = operators()
    rng = np.random.default_rng(0)
    targets = np.c_[rng.uniform(2, 8, (6, 1, 2)), rng.uniform(220, 250, (6, 1, 1))]
    y = torch.tensor(render(targets).reshape(6, -1))
    kw = dict(lam=1.0, max_iter=400, tol=0.2)  # loose tol: samples stop at different times
    x, iters = ista(y, phi, pinv, lipschitz, **kw)
    assert len(set(iters.tolist())) > 2 and iters.max() < 400
    for i in range(len(y)):
        xi, ii = ista(y[i : i + 1], phi, pinv, lipschitz, **kw)
        assert ii.item() == iters[i].item()
        torch.testing.assert_close(x[i], xi[0], rtol=0, atol=1e-9)
    # Stopping matters: running on would change the early finishers.
    x_long, _ = ista(y, phi, pinv, lipschitz, lam=1.0, max_iter=400, tol=1e-12)
    assert torch.linalg.vector_norm(x_long - x, dim=1).min() > 1e-3


def test_rejects_bad_shapes_and_settings():
    phi, pinv, lipschitz = operators()
    with pytest.raises(ValueError, match=r"y must have shape \(B, 121\)"):
        ista(torch.zeros(2, 100, dtype=torch.float64), phi, pinv, lipschitz)
    with pytest.raises(ValueError, match="max_iter >= 1"):
        IstaUnmixer(max_iter=0)
    with pytest.raises(ValueError, match="windows must have shape"):
        IstaUnmixer()(torch.zeros(1, 3, 11, 11), torch.tensor([2]))


def test_registered_untrainable_and_loadable_without_weights():
    model = get_model("ista", max_iter=10)
    assert isinstance(model, IstaUnmixer) and model.trainable is False
    assert sum(p.numel() for p in model.parameters()) == 0
    loaded, meta = load_model("ista")
    assert isinstance(loaded, IstaUnmixer) and not loaded.training and meta == {"model": "ista"}
