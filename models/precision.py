"""Numeric precision of inference: float32, or bfloat16 where the CPU computes it natively.

``precision`` is one of :data:`PRECISIONS`:

- ``fp32`` (the default of the unmixer stage and the commands): float32 weights and
  activations.
- ``bf16``: the model's weights and activations in bfloat16 (``model.to(torch.bfloat16)``),
  maps returned in float32. On CPUs without AVX-512 BF16 or AMX, bf16 is emulated and several
  times slower than fp32 (measured on an AVX2 machine: DeRefNet 1.1 against 8.8 windows/s).
- ``auto``: ``bf16`` on a CPU device whose CPU runs bf16 natively (:func:`bf16_native`),
  ``fp32`` elsewhere, so a config can ask for it on any machine.

The accuracy of bf16 against fp32 is measured by ``python -m models bench --data SET`` and
``python -m models evaluate --precision bf16`` (README, "Speed").
"""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "auto")


def bf16_native() -> bool:
    """True where this CPU computes bf16 natively (AVX-512 BF16 or AMX): oneDNN says so."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision, ``fp32`` or ``bf16``."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``fp32`` or ``bf16`` for a configured ``precision`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if str(device).startswith("cpu") and bf16_native() else "fp32"
    return precision


def model_dtype(model):
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch_dtype("fp32")
