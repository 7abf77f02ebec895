"""Weights as data: a small ``.pt`` state dict plus a JSON metadata sidecar.

``NAME.pt`` holds ``{"model": name, "config": {...}, "state_dict": {...}}``;
``NAME.json`` holds the metadata (config, data recipe, seed, epochs, wall time, metrics) and
the sha256 of the ``.pt`` file, which :func:`load_weights` verifies.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from models.registry import get_model

if TYPE_CHECKING:  # torch is imported where weights are read or written, so that a process
    from models.base import UnmixingModel  # that only needs WeightsError does not pay for it

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: PSF σ (px) of the paper's data, the range of weights whose metadata states none.
PAPER_PSF = 0.5
#: How far (px) a data σ may lie outside the trained range before it is called a mismatch.
PSF_TOLERANCE = 0.02


class WeightsError(ValueError):
    """A weights file is missing, corrupt or does not match its metadata."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_weights(name: str) -> Path:
    """Path of the shipped default weights of a model (may not exist)."""
    return WEIGHTS_DIR / f"{name}.pt"


def save_weights(path: str | Path, model: UnmixingModel, name: str, config: dict,
                 meta: dict) -> dict:
    """Write ``path`` (.pt) and its ``.json`` sidecar; returns the metadata written."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"model": name, "config": dict(config), "state_dict": state}, path)
    full = {"model": name, "config": dict(config), **meta, "sha256": sha256_file(path)}
    path.with_suffix(".json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def read_metadata(path: str | Path) -> dict:
    """The JSON sidecar of a weights file."""
    side = Path(path).with_suffix(".json")
    if not side.exists():
        raise WeightsError(f"{side} is missing; weights need their metadata sidecar")
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"{side}: not a readable JSON metadata file ({type(exc).__name__}); "
                           "restore it, or retrain to write a new one") from exc
    if not isinstance(meta, dict):
        raise WeightsError(f"{side}: the metadata must be a JSON object")
    return meta


def load_weights(path: str | Path, verify: bool = True) -> tuple[UnmixingModel, dict]:
    """Build the model named in a weights file and load its parameters (CPU).

    Returns the model in eval mode and its metadata.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    meta = read_metadata(path)
    if verify and meta.get("sha256") != sha256_file(path):
        raise WeightsError(f"{path}: sha256 does not match its metadata; the file is corrupt")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise WeightsError(f"{path}: cannot read weights ({exc})") from exc
    model = get_model(blob["model"], **blob["config"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, meta


def trained_psf(meta: dict) -> tuple[float, float]:
    """(lowest, highest) PSF σ (px) the weights were trained for: ``psf_range`` of their
    metadata, or the paper's 0.5 for weights that state none."""
    low, high = meta.get("psf_range") or (PAPER_PSF, PAPER_PSF)
    return float(low), float(high)


def psf_mismatch(name: str, meta: dict, sigma: float) -> str | None:
    """One line saying that weights meet data of a PSF σ they were not trained for (with the
    fix), or None when σ lies in their range (± PSF_TOLERANCE) or the model learns nothing."""
    if "sha256" not in meta:  # a model without weights (ISTA, BID) builds Φ itself
        return None
    low, high = trained_psf(meta)
    if low - PSF_TOLERANCE <= sigma <= high + PSF_TOLERANCE:
        return None
    trained = f"{low:g}" if low == high else f"{low:g}–{high:g}"
    return (f"{name} weights were trained for PSF sigma {trained} px but the data (or the "
            f"sensor profile) have sigma = {sigma:g} px: expect poor accuracy; use weights "
            "trained for it "
            f"(generate data with `python -m sim generate --psf {sigma:g}` and train with "
            "`python -m models train`)")


def load_model(name: str, weights: str | Path | None = None) -> tuple[UnmixingModel, dict]:
    """A ready-to-run model: given weights, the shipped default, or (untrained-free models) none."""
    path = Path(weights) if weights is not None else default_weights(name)
    if path.exists() or weights is not None:
        model, meta = load_weights(path)
        if meta.get("model") != name:
            raise WeightsError(f"{path} holds weights of {meta.get('model')!r}, not {name!r}")
        return model, meta
    model = get_model(name)
    if model.trainable:
        raise WeightsError(
            f"model {name!r} has no shipped weights at {path}; pass --weights FILE "
            f"or train it with `python -m models train --config configs/models/{name}.yaml`"
        )
    return model.eval(), {"model": name}
