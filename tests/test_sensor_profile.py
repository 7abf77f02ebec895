"""The sensor profile (sim/sensor.py): one ``sensor`` section read by the stages that need
it, explicit stage options winning; the cropper's raw-to-grey scale; a model told its PSF."""

import logging
import textwrap

import numpy as np
import pytest

from models.config import ConfigError
from pipeline.config import load
from stages.cropper import Cropper, CropperConfig
from stages.messages import Blob, Blobs, Frame
from stages.unmixer import Unmixer, UnmixerConfig

CHAIN = """
run: {frames: 5}
sensor: {psf_sigma: 0.62, noise_sigma: 1.5, gain: 0.5, offset: 100, saturation: 4095}
stages:
  - {name: source, kind: simulator}
  - {name: detector, kind: detector}
  - {name: cropper, kind: cropper}
  - {name: unmixer, kind: unmixer, config: {model: fastunmix}}
  - {name: extractor, kind: extractor, config: {noise_grey: 2.0}}
  - {name: tracker, kind: tracker}
  - {name: console, kind: console}
"""


def plans_of(tmp_path, text):
    path = tmp_path / "chain.yaml"
    path.write_text(textwrap.dedent(text))
    return {p.name: p.config for p in load(path)[1]}


def test_the_profile_fills_the_stages_that_take_it_and_explicit_options_win(tmp_path):
    cfg = plans_of(tmp_path, CHAIN)
    assert cfg["source"].psf_sigma == 0.62
    assert cfg["unmixer"].psf_sigma == 0.62
    assert cfg["extractor"].psf_sigma == 0.62
    assert cfg["extractor"].noise_grey == 2.0  # the stage's own value
    assert (cfg["cropper"].gain, cfg["cropper"].offset, cfg["cropper"].saturation) == \
        (0.5, 100.0, 4095.0)
    plain = plans_of(tmp_path, CHAIN.replace("sensor: {psf_sigma: 0.62, noise_sigma: 1.5, "
                                             "gain: 0.5, offset: 100, saturation: 4095}\n", ""))
    assert plain["unmixer"].psf_sigma == 0.5 and plain["cropper"].gain == 1.0


@pytest.mark.parametrize("profile, key", [("{psf_sigma: 5}", "psf_sigma"),
                                          ("{gain: 0}", "gain"), ("{psf: 0.5}", "psf")])
def test_a_bad_profile_names_its_key(tmp_path, profile, key):
    text = CHAIN.replace("{psf_sigma: 0.62, noise_sigma: 1.5, gain: 0.5, offset: 100, "
                         "saturation: 4095}", profile)
    with pytest.raises(ConfigError, match=rf"sensor.*{key}"):
        plans_of(tmp_path, text)


def test_the_cropper_scales_raw_counts_to_grey_levels():
    raw = np.full((40, 40), 1000, dtype=np.uint16)
    raw[20, 20] = 1000 + 2 * 200  # a 200-grey-level spot at gain 0.5
    cropper = Cropper(CropperConfig(gain=0.5, offset=1000.0, subtract_background=False))
    out = []
    for seq in range(6):
        out += cropper.process(Frame(seq=seq, t_source_ns=seq, image=raw))
        out += cropper.process(Blobs(seq=seq, t_source_ns=seq,
                                     blobs=(Blob(row=20.0, col=20.0, peak=200.0, area=1,
                                                 snr=50.0),)))
    windows = [m for m in out if m.windows]
    assert windows
    patch = windows[-1].patches[0, 2]
    assert patch.max() == pytest.approx(200.0) and patch.min() == pytest.approx(0.0)
    assert windows[-1].windows[0].saturation == pytest.approx(0.5 * (65535 - 1000))


def test_the_unmixer_tells_the_model_its_psf_and_warns_once_for_foreign_weights(caplog):
    unmixer = Unmixer(UnmixerConfig(model="fastunmix", psf_sigma=0.7))
    with caplog.at_level(logging.WARNING, logger="stages.unmixer"):
        unmixer.start()
    assert unmixer.model.psf_sigma == 0.7
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "trained for PSF sigma 0.5" in lines[0]
    assert "--psf 0.7" in lines[0]
    quiet = Unmixer(UnmixerConfig(model="fastunmix"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stages.unmixer"):
        quiet.start()
    assert not caplog.records


def test_the_chain_warns_once_for_weights_of_another_psf(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "chain.yaml"
    path.write_text(textwrap.dedent(CHAIN.replace("run: {frames: 5}", "run: {frames: 3}")))
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "trained for PSF sigma" in line]
    assert len(lines) == 1 and "0.62" in lines[0]
