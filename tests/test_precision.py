"""Reduced precision: bf16 only where asked (or, with ``auto``, where the CPU runs it
natively), and the same points as fp32 within bf16's rounding."""

import numpy as np
import pytest
import torch

import models.layers.deform as deform
from models.extract import extract_points
from models.precision import bf16_native, model_dtype, resolve_precision
from models.protocol import eval_windows
from sim.dataset import simulate
from stages.unmixer import Unmixer, UnmixerConfig


def test_auto_follows_the_cpu_and_unknown_precisions_are_refused():
    assert resolve_precision("auto") == ("bf16" if bf16_native() else "fp32")
    assert resolve_precision("auto", "cuda") == "fp32"
    assert [resolve_precision(p) for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match="'fp16'"):
        resolve_precision("fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        UnmixerConfig(precision="fp16")


def test_bf16_deform_conv_takes_the_compiled_kernel_and_matches_fp32(monkeypatch):
    calls = []
    kernel = deform._sample_columns

    def counted(*args):
        calls.append(args[0].dtype)
        kernel(*args)

    monkeypatch.setattr(deform, "_sample_columns", counted)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 9, 9, generator=g).bfloat16()
    offset = (1.5 * torch.randn(2, 18, 9, 9, generator=g)).bfloat16()
    weight = (0.2 * torch.randn(8, 8, 3, 3, generator=g)).bfloat16()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            got = deform.deform_conv2d(x, offset, weight)
            want = deform.deform_conv2d(x.float(), offset.float(), weight.float())
    finally:
        torch.set_num_threads(before)
    assert got.dtype == torch.bfloat16 and calls == [np.float32, np.float32]
    # same inputs, the bf16 matmul rounds the samples: ~3 significant digits
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("model", ["fastunmix", "derefnet"])
def test_a_bf16_unmixer_gives_fp32_points_within_bf16_rounding(model):
    """The stage converts the model (DeRefNet: its feature cache too) and returns float32
    maps whose extracted points lie within 0.02 px of fp32's."""
    windows, index, _ = eval_windows(simulate(1, seed=5))
    windows, index = windows[:3], index[:3]
    points = {}
    for precision in ("fp32", "bf16"):
        stage = Unmixer(UnmixerConfig(model=model, precision=precision))
        stage.start()
        assert model_dtype(stage.model) == {"fp32": torch.float32,
                                            "bf16": torch.bfloat16}[precision]
        maps = stage.unmix(windows, index)
        assert maps.dtype == np.float32
        points[precision] = extract_points(maps, windows)
    for fp32, bf16 in zip(points["fp32"], points["bf16"], strict=True):
        assert len(fp32) == len(bf16) >= 2
        assert np.abs(fp32[:, :2] - bf16[:, :2]).max() < 0.02
