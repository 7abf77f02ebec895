"""The per-window ceiling (models/ceiling.py): the Jacobian, the hit probability, the window
truth, and the bound itself (a count-known fit's errors match it where it is well posed)."""

import numpy as np
import pytest

from models.ceiling import (
    crlb_covariances,
    hit_probability,
    render_window,
    truth_fit,
    window_parameters,
)
from sim.dataset import SeqDataset
from sim.render import render

TWO = np.array([[5.0, 5.0, 0.03, 0.01, 200.0], [5.2, 5.55, 0.03, 0.01, 120.0]])


def test_window_model_matches_the_renderer_and_its_jacobian_finite_differences():
    model, jac = render_window(TWO, 0.6)
    dt = np.arange(5) - 2
    pos = TWO[None, :, :2] + dt[:, None, None] * TWO[None, :, 2:4]
    targets = np.concatenate([pos, np.broadcast_to(TWO[:, 4:], (5, 2, 1))], axis=-1)
    np.testing.assert_allclose(model, render(targets, sigma=0.6), atol=1e-10)
    h = 1e-6
    for col in range(TWO.size):
        up, down = TWO.copy().ravel(), TWO.copy().ravel()
        up[col] += h
        down[col] -= h
        numeric = (render_window(up.reshape(2, 5), 0.6)[0]
                   - render_window(down.reshape(2, 5), 0.6)[0]).ravel() / (2 * h)
        np.testing.assert_allclose(jac[:, col], numeric, atol=1e-5)


def test_hit_probability_matches_closed_form_and_monte_carlo():
    iso = np.array([[[0.01, 0.0], [0.0, 0.01]]])
    d = np.array([0.1, 0.2])
    np.testing.assert_allclose(hit_probability(iso, d)[0], 1 - np.exp(-d**2 / 0.02), atol=1e-9)
    cov = np.array([[0.01, 0.006], [0.006, 0.02]])
    e = np.random.default_rng(1).multivariate_normal([0, 0], cov, size=200_000)
    mc = [(np.hypot(*e.T) <= x).mean() for x in (0.05, 0.1, 0.2)]
    np.testing.assert_allclose(hit_probability(cov, [0.05, 0.1, 0.2])[0], mc, atol=0.004)
    tiny, huge = np.eye(2) * 1e-10, np.eye(2) * 1e4
    np.testing.assert_allclose(hit_probability(np.stack([tiny, huge]), [0.05])[:, 0],
                               [1.0, 1.25e-7], rtol=1e-3)


def test_window_parameters_recover_positions_velocities_and_brightness():
    t = np.arange(20, dtype=np.float64)
    targets = np.full((20, 3, 3), np.nan)
    targets[:, 0] = np.column_stack([3 + 0.05 * t, 4 - 0.02 * t, np.full(20, 150.0)])
    targets[:, 1] = np.column_stack([6 + 0.0 * t, 6 + 0.03 * t, np.full(20, 90.0)])
    ds = SeqDataset(np.zeros((20, 11, 11), np.uint8), targets)
    (params,) = window_parameters(ds, np.array([7]))
    np.testing.assert_allclose(params, [[3.35, 3.86, 0.05, -0.02, 150.0],
                                        [6.0, 6.21, 0.0, 0.03, 90.0]], atol=1e-12)


def test_count_known_fit_errors_match_the_bound_on_two_targets():
    """Noise σ = 0.01 on float frames (no rounding): the fit is in its linear regime, where
    least squares is efficient, so its error std per coordinate equals the bound's."""
    noise = 0.01
    cov = crlb_covariances(TWO, 0.5, noise, quantized=False)
    model, _ = render_window(TWO, 0.5)
    rng = np.random.default_rng(0)
    errors = np.array([
        truth_fit(model + rng.normal(0, noise, model.shape), TWO, 0.5, noise,
                  quantized=False)[:, :2] - TWO[:, :2]
        for _ in range(400)
    ])
    bound = np.sqrt(np.stack([np.diag(c) for c in cov]))
    ratio = errors.std(axis=0) / bound
    assert np.all((ratio > 0.9) & (ratio < 1.1)), ratio


def test_bound_grows_with_noise_and_saturation_and_rounding():
    clean = crlb_covariances(TWO, 0.5, 0.0, quantized=True)
    noisy = crlb_covariances(TWO, 0.5, 2.0, quantized=True)
    assert np.all(np.trace(noisy, axis1=1, axis2=2) > 10 * np.trace(clean, axis1=1, axis2=2))
    rounding_only = np.sqrt(np.diag(clean[0]))
    assert np.all((rounding_only > 1e-4) & (rounding_only < 0.02))
    bright = TWO.copy()
    bright[:, 4] = 2000.0  # the peaks clip: their pixels count for nothing
    capped = crlb_covariances(bright, 0.5, 1.0, saturation=255.0)
    free = crlb_covariances(bright, 0.5, 1.0, saturation=1e9)
    assert np.all(np.trace(capped, axis1=1, axis2=2) > np.trace(free, axis1=1, axis2=2))


@pytest.mark.parametrize("gain", [0.0, 1.5])
def test_truth_fit_recovers_a_clean_window(gain):
    model, _ = render_window(TWO, 0.5)
    fitted = truth_fit(model, TWO + np.array([0.05, -0.04, 0.0, 0.0, 10.0]), 0.5, 0.3, gain=gain)
    np.testing.assert_allclose(fitted, TWO, atol=1e-5)
