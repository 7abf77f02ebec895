"""Φ (sampling matrix) and the renderer against docs/reference.md (§1.3, §1.4, §1.6, §2.1)."""

import numpy as np
import pytest
from scipy.integrate import dblquad

from sim.phi import fit_qinit, hr_centres, phi_matrix
from sim.render import gt_map, render, render_uint8, to_uint8

SIGMA = 0.5


def hr_column(i: int, j: int) -> int:
    return i * 33 + j


def test_target_at_row5_col2_lights_pixel_5_2_and_hr_cell_16_7():
    targets = np.array([[5.0, 2.0, 230.0]])
    image = render(targets)
    assert np.unravel_index(np.argmax(image), image.shape) == (5, 2)
    assert image[5, 2] > 100 and image[2, 5] < 1e-6  # rows and columns not swapped
    hr = gt_map(targets)
    assert np.argwhere(hr).tolist() == [[16, 7]]
    assert hr[16, 7] == 230.0


def test_phi_shape_rank_and_published_properties():
    phi = phi_matrix()
    assert phi.shape == (121, 1089)
    assert phi.max() == pytest.approx(0.46606, abs=5e-6)
    assert np.linalg.norm(phi, 2) == pytest.approx(2.93029, abs=5e-6)
    assert np.linalg.matrix_rank(phi) == 121
    sums = phi.sum(axis=0)
    assert sums[hr_column(16, 16)] == pytest.approx(1.0, abs=1e-12)  # centre of pixel (5, 5)
    assert sums[hr_column(5, 5)] == pytest.approx(0.99975, abs=5e-6)
    assert sums[hr_column(0, 0)] == pytest.approx(0.3976, abs=5e-5)
    assert np.all(sums <= 1.0 + 1e-12)  # no renormalisation: energy leaves the patch


def test_phi_entries_equal_numeric_2d_integration_of_the_gaussian():
    phi = phi_matrix()
    centres = hr_centres()

    def integral(p: int, q: int, i: int, j: int) -> float:
        mu_row, mu_col = centres[i], centres[j]

        def density(col: float, row: float) -> float:  # dblquad: inner variable first
            r2 = (row - mu_row) ** 2 + (col - mu_col) ** 2
            return np.exp(-r2 / (2 * SIGMA**2)) / (2 * np.pi * SIGMA**2)

        value, _ = dblquad(density, p - 0.5, p + 0.5, q - 0.5, q + 0.5, epsabs=1e-12)
        return value

    # (LR row, LR col, HR row, HR col): on-centre, off-centre asymmetric, corner cell.
    for p, q, i, j in [(5, 5, 16, 16), (4, 6, 14, 19), (0, 0, 0, 0), (3, 1, 11, 2)]:
        assert phi[p * 11 + q, hr_column(i, j)] == pytest.approx(integral(p, q, i, j), abs=1e-9)


def test_phi_other_ratio_and_sigma():
    phi = phi_matrix(patch=7, ratio=5, sigma=0.15)
    assert phi.shape == (49, 35 * 35)
    # ratio 5: HR cell 5p + 2 is the centre of LR pixel p.
    column = phi[:, (5 * 3 + 2) * 35 + (5 * 3 + 2)].reshape(7, 7)
    assert np.unravel_index(np.argmax(column), column.shape) == (3, 3)
    assert column.sum() == pytest.approx(1.0, abs=1e-12)


def test_render_on_hr_grid_nodes_equals_phi_times_gt_map():
    rng = np.random.default_rng(0)
    phi = phi_matrix()
    for _ in range(20):
        k = rng.integers(1, 6)
        cells = np.unique(rng.integers(3, 30, size=(k, 2)), axis=0)  # distinct HR cells
        targets = np.column_stack([(cells - 1) / 3.0, rng.integers(220, 251, len(cells))])
        expected = (phi @ gt_map(targets).astype(np.float64).ravel()).reshape(11, 11)
        np.testing.assert_allclose(render(targets), expected, rtol=0, atol=1e-9)


def test_render_is_linear_and_ignores_nan_padding():
    a = np.array([[4.2, 5.9, 230.0]])
    b = np.array([[6.1, 3.3, 241.5]])
    padded = np.array([[4.2, 5.9, 230.0], [6.1, 3.3, 241.5], [np.nan] * 3])
    np.testing.assert_allclose(render(padded), render(a) + render(b), atol=1e-12)
    batch = np.stack([padded, padded])[None]  # (1, 2, K, 3)
    assert render(batch).shape == (1, 2, 11, 11)


def test_uint8_rounds_half_to_even_and_saturates():
    values = np.array([-3.2, 0.4, 0.5, 1.5, 2.5, 2.51, 254.49, 254.6, 255.4, 300.0])
    assert to_uint8(values).tolist() == [0, 0, 0, 2, 2, 3, 254, 255, 255, 255]
    assert to_uint8(values).dtype == np.uint8


def test_dense_group_saturates_at_255():
    targets = np.array(
        [[5.0, 4.7, 250.0], [5.0, 5.3, 250.0], [4.7, 5.0, 250.0], [5.3, 5.0, 250.0]]
    )
    assert render(targets).max() > 255
    image = render_uint8(targets)
    assert image.max() == 255
    np.testing.assert_array_equal(image, to_uint8(render(targets)))


def test_noise_needs_an_explicit_generator():
    with pytest.raises(ValueError, match="rng"):
        render_uint8(np.array([[5.0, 5.0, 230.0]]), noise_sigma=2.0)


def test_fit_qinit_solves_the_normal_equations():
    rng = np.random.default_rng(1)
    maps = np.zeros((400, 33, 33))
    rows, cols = rng.integers(0, 33, (2, 400, 3))
    for n in range(400):
        maps[n, rows[n], cols[n]] = rng.uniform(220, 250, 3)
    phi = phi_matrix()
    qinit = fit_qinit(maps, phi)
    assert qinit.shape == (1089, 121)
    x = maps.reshape(400, -1).T
    y = phi @ x
    xyt = x @ y.T
    np.testing.assert_allclose(qinit @ y @ y.T, xyt, rtol=0, atol=1e-6 * np.abs(xyt).max())
    with pytest.raises(ValueError, match="cells"):
        fit_qinit(np.zeros((3, 10, 10)), phi)
