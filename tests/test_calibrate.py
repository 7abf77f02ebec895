"""``python -m models calibrate``: the PSF σ of simulated sets from their isolated targets."""

import json

import numpy as np
import pytest

from models.__main__ import main
from models.calibrate import fit_spot, saturation_level, shorth_mode
from sim.dataset import save_npz, simulate
from sim.families import PRESETS
from sim.render import render_uint8


@pytest.mark.parametrize("sigma", [0.4, 0.5, 0.7])
def test_calibrate_recovers_the_psf_of_simulated_sets(tmp_path, capsys, sigma):
    path = tmp_path / "set.npz"
    save_npz(path, simulate(30, 11, PRESETS["realistic"], sigma=sigma))
    out = tmp_path / "profile.json"
    assert main(["calibrate", str(path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert abs(result["psf_sigma"] - sigma) <= 0.02
    assert result["psf_sigma_std"] < 0.02 and result["spots"] >= 5
    assert abs(result["noise_sigma"] - 0.29) < 0.05
    printed = capsys.readouterr().out
    assert "sensor:" in printed and f"psf_sigma: {result['psf_sigma']:.3f}" in printed


def test_a_lone_spot_fit_finds_sigma_and_position():
    targets = np.array([[[5.2 + 0.03 * t, 4.8, 180.0]] for t in range(-2, 3)])
    window = render_uint8(targets, sigma=0.62).astype(np.float64)
    fit = fit_spot(window)
    assert abs(fit[6] - 0.62) < 0.01 and abs(fit[0] - 5.2) < 0.01 and abs(fit[2] - 0.03) < 0.005


def test_shorth_mode_ignores_a_one_sided_tail_and_saturation_needs_clipped_pixels():
    values = np.r_[np.full(60, 0.5), np.linspace(0.55, 0.9, 40)]
    assert shorth_mode(values) == pytest.approx(0.5)
    assert saturation_level(np.array([[10, 255], [255, 3]])) == 255
    assert saturation_level(np.arange(10000)) is None


def test_data_without_lone_targets_is_named(tmp_path):
    path = tmp_path / "flat.npz"
    ds = simulate(3, 1)
    ds.images[:] = 7  # nothing to fit
    save_npz(path, ds)
    with pytest.raises(ValueError, match="lone point source"):
        main(["calibrate", str(path)])
