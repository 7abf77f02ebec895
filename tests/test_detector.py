"""Top-hat detector: finds every simulated group, ignores flat noise; external pass-through."""

import numpy as np
import pytest

from models.config import ConfigError
from stages.detector import BLOB_COLUMNS, Detector, DetectorConfig, detect_blobs
from stages.messages import Blob, Blobs, Frame
from stages.scene import SceneConfig, SceneSimulator


def _nearest(refs: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """(G, N) distances between group references and blob centroids."""
    return np.linalg.norm(refs[:, None, :] - blobs[None, :, :2], axis=-1)


def test_every_group_of_a_simulated_frame_is_found_with_few_false_alarms():
    scene = SceneSimulator(SceneConfig(gradient=20.0), seed=4)
    false_alarms = 0
    for _ in range(20):
        image, truth = scene.step()
        blobs = detect_blobs(image)
        dist = _nearest(truth.references, blobs)
        assert np.all(dist.min(axis=1) < 0.5), "a group was missed or badly located"
        false_alarms += int(np.sum(dist.min(axis=0) > 3.0))
    assert false_alarms <= 2


def test_centroid_is_intensity_weighted_and_columns_are_documented():
    scene = SceneSimulator(SceneConfig(groups=1, noise_sigma=0.0, quantize=False), seed=1)
    image, truth = scene.step()
    blobs = detect_blobs(image)
    assert blobs.shape == (1, len(BLOB_COLUMNS))
    row, col, peak, area, snr = blobs[0]
    t = truth.targets
    expected = (t[:, :2] * t[:, 2:]).sum(0) / t[:, 2].sum()
    np.testing.assert_allclose([row, col], expected, atol=0.05)
    assert area >= 4 and peak > 50 and snr > 10


def test_flat_noise_gives_no_blob():
    rng = np.random.default_rng(0)
    for _ in range(5):
        image = np.rint(20.0 + rng.normal(0.0, 1.0, (256, 256))).astype(np.float32)
        assert len(detect_blobs(image)) == 0


def test_clutter_point_is_detected_and_area_gate_rejects_big_blobs():
    scene = SceneSimulator(SceneConfig(groups=0, clutter=2, clutter_brightness=(150, 150)), 3)
    image, truth = scene.step()
    assert len(detect_blobs(image)) == 2
    assert len(detect_blobs(image, DetectorConfig(min_area=40))) == 0


def test_meanstd_statistic_also_works():
    image, truth = SceneSimulator(SceneConfig(groups=3), seed=8).step()
    blobs = detect_blobs(image, DetectorConfig(statistic="meanstd", k=20.0))
    assert np.all(_nearest(truth.references, blobs).min(axis=1) < 0.5)


def test_stage_emits_blobs_with_the_frame_header():
    image, _ = SceneSimulator(SceneConfig(groups=2), seed=0).step()
    (out,) = Detector().process(Frame(seq=7, t_source_ns=123, image=image))
    assert isinstance(out, Blobs) and (out.seq, out.t_source_ns) == (7, 123)
    assert len(out.blobs) == 2 and all(isinstance(b, Blob) for b in out.blobs)


def test_external_mode_passes_valid_blobs_through():
    stage = Detector(DetectorConfig(kind="external"))
    good = Blob(row=3.0, col=4.0, peak=90.0, area=5, snr=12.0)
    bad = Blob(row=float("nan"), col=4.0, peak=90.0, area=5, snr=12.0)
    (out,) = stage.process(Blobs(seq=2, t_source_ns=5, blobs=(good, bad)))
    assert out.blobs == (good,) and out.seq == 2 and stage.rejected == 1
    far = Blob(row=1e12, col=4.0, peak=90.0, area=5, snr=12.0)  # beyond any sensor frame
    (out,) = stage.process(Blobs(seq=3, t_source_ns=5, blobs=(far, good)))
    assert out.blobs == (good,) and stage.rejected == 2
    with pytest.raises(ConfigError, match="Blobs"):
        stage.process(Frame(seq=3, t_source_ns=0, image=np.zeros((4, 4), np.float32)))


def test_external_mode_keeps_at_most_max_blobs_highest_snr_first():
    stage = Detector(DetectorConfig(kind="external", max_blobs=3))
    flood = tuple(Blob(row=float(i), col=1.0, peak=9.0, area=2, snr=float(i % 50))
                  for i in range(5000))
    (out,) = stage.process(Blobs(seq=0, t_source_ns=0, blobs=flood))
    assert [b.snr for b in out.blobs] == [49.0, 49.0, 49.0]
    assert stage.summary() == {"rejected": 0, "truncated": 4997}


def test_a_frame_with_more_blobs_than_max_blobs_keeps_the_brightest_and_counts_the_rest():
    rng = np.random.default_rng(5)
    image = rng.normal(20.0, 1.0, (96, 96)).astype(np.float32)
    peaks = {}
    for i in range(5):  # five spots of rising brightness, one at the frame's border
        row, col = (10 + 18 * i, 20) if i else (0, 50)
        image[max(row - 1, 0):row + 2, col - 1:col + 2] += 40.0 + 20.0 * i
        peaks[i] = (row, col)
    stage = Detector(DetectorConfig(max_blobs=3))
    (out,) = stage.process(Frame(seq=0, t_source_ns=0, image=image))
    assert len(out.blobs) == 3 and stage.summary() == {"truncated": 2}
    kept = sorted(round(b.row) for b in out.blobs)
    assert kept == [peaks[i][0] for i in (2, 3, 4)]  # the three brightest
    (out,) = Detector(DetectorConfig(max_blobs=8)).process(
        Frame(seq=1, t_source_ns=0, image=image))
    assert len(out.blobs) == 5  # the spot cut by the border is a blob like the others
    assert min(b.row for b in out.blobs) < 1.0


def test_bad_config_names_the_problem():
    with pytest.raises(ValueError, match="kind"):
        DetectorConfig(kind="mpcm")
    with pytest.raises(ValueError, match="odd"):
        DetectorConfig(kernel=8)
