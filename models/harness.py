"""The harness every model is scored by: run it over the protocol's windows, turn its maps into
detections, match them with CSO-mAP; and its cost (learned parameters, MACs per window).

Output maps become detections either on the HR grid (``grid``: every cell ≥ 70 is a detection,
the reference rule), as sub-pixel points (``points``: :func:`models.extract.extract_points`),
or as those points snapped to the grid's nodes (``snapped``: :mod:`models.snap`, the points'
worth in the reference's own grid terms).

Cost conventions: ``params`` counts learned parameters (not buffers such as Φ). ``macs`` are
multiply-accumulates of one forward over **one window**, counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmul/linear/conv/attention ops; FLOPs = 2 × MACs;
element-wise ops and torchvision's deformable convolution count 0, like fvcore and the
paper's count of mmcv DCN ops). ``macs_per_trajectory`` = 16 × ``macs``; Table VII instead
counts one forward over a 20-frame batch, which is lower for models that share per-frame work
between windows. ``windows_per_s`` = scored windows / time spent in the model's forward.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.base import UnmixingModel
from models.extract import extract_points
from models.metric import grid_detections, match_detections, summarize
from models.precision import model_dtype
from models.protocol import HALF, eval_windows, ground_truths
from models.snap import snapped_detections
from sim.dataset import SeqDataset
from sim.geometry import HR, SIGMA
from sim.render import UINT8_MAX

MODES = ("grid", "points", "snapped")


@dataclass(frozen=True)
class Predictions:
    """Model outputs for the evaluated frames of a dataset, in dataset order.

    Attributes
    ----------
    maps : ndarray of shape (N, 33, 33), float32
        Output maps (grey levels).
    windows : ndarray of shape (N, 5, 11, 11), float32
        Input windows (raw grey levels).
    frames : ndarray of shape (N,), int64
        Dataset index of the middle frame of each window (the frame scored).
    forward_s : float
        Seconds spent in the model's forward calls for ``maps`` (the grid pass is not counted).
    saturation : ndarray of shape (N,), float64
        Level at which each window's pixels clip (:meth:`SeqDataset.trajectory_saturation`).
    grid_maps : ndarray of shape (N, 33, 33), float32, or None
        The grid head's maps (models with one), scored in ``grid`` mode instead of ``maps``.
    sigma : float
        PSF std (px) the data state (:attr:`SeqDataset.sigma`): the model was told it
        (:meth:`UnmixingModel.set_psf`) and the points extractor fits with it.
    """

    maps: np.ndarray
    windows: np.ndarray
    frames: np.ndarray
    forward_s: float
    saturation: np.ndarray
    grid_maps: np.ndarray | None = None
    sigma: float = SIGMA

    def maps_for(self, mode: str) -> np.ndarray:
        """The maps that ``mode`` scores: the grid head's in ``grid`` mode where there is
        one, else ``maps``."""
        return self.grid_maps if mode == "grid" and self.grid_maps is not None else self.maps


def _model_device(model: torch.nn.Module) -> torch.device:
    tensors = [*model.parameters(), *model.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


@contextmanager
def _inference(model: torch.nn.Module):
    """Eval mode and ``torch.inference_mode`` for the block; the train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _batches(model: UnmixingModel, dataset: SeqDataset, batch_size: int, device: torch.device):
    """(slice of evaluated windows, forward thunk) pairs, about ``batch_size`` windows each.

    Every model gets whole trajectories through :meth:`UnmixingModel.forward_sequences`, so a model
    that shares per-frame work (DeRefNet) computes each frame's features once; the windows of
    a trajectory come out in the order :func:`~models.protocol.eval_windows` lists them. The
    frames are given in the model's dtype (bfloat16 for a model converted to it).
    """
    per_traj = dataset.traj_len - 2 * HALF
    images = dataset.trajectory_images()
    step = max(1, batch_size // per_traj)
    for first in range(0, dataset.n_trajectories, step):
        frames = torch.from_numpy(images[first:first + step].astype(np.float32)).to(
            device, model_dtype(model))
        starts = torch.zeros(len(frames), dtype=torch.int64, device=device)
        yield (slice(first * per_traj, (first + len(frames)) * per_traj),
               lambda f=frames, s=starts: model.forward_sequences(f, s))


def predict_maps(model: UnmixingModel, dataset: SeqDataset, batch_size: int = 256) -> Predictions:
    """Run ``model`` on every evaluated window in eval mode under ``torch.inference_mode``.

    A model with a grid head runs a second pass for its ``grid`` output
    (``Predictions.grid_maps``). The model is told the data's PSF σ
    (:meth:`UnmixingModel.set_psf`). Its train/eval mode, output and PSF are restored
    afterwards, so a training loop can call this.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    windows, _, frames = eval_windows(dataset)
    before = model.psf_sigma
    model.set_psf(dataset.sigma)
    try:
        maps, forward_s = _run_output(model, dataset, batch_size, "map")
        grid_maps = None
        if "grid" in model.outputs():
            grid_maps, _ = _run_output(model, dataset, batch_size, "grid")
    finally:
        model.set_psf(before)
    saturation = dataset.trajectory_saturation()[frames // dataset.traj_len]
    return Predictions(maps, windows, frames, forward_s, saturation, grid_maps, dataset.sigma)


def _run_output(model: UnmixingModel, dataset: SeqDataset, batch_size: int,
                output: str) -> tuple[np.ndarray, float]:
    """One output's maps (N, 33, 33) float32 over the evaluated windows, and the seconds spent
    in forward calls."""
    device = _model_device(model)
    n_windows = dataset.n_trajectories * (dataset.traj_len - 2 * HALF)
    maps = np.empty((n_windows, HR, HR), dtype=np.float32)
    forward_s = 0.0
    before = model.output
    model.set_output(output)
    try:
        with _inference(model):
            for where, forward in _batches(model, dataset, batch_size, device):
                tic = time.perf_counter()
                out, _ = forward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                forward_s += time.perf_counter() - tic
                n = where.stop - where.start
                model.check_maps(out, n)
                maps[where] = out.float().cpu().numpy().reshape(n, HR, HR)
    finally:
        model.set_output(before)
    return maps, forward_s


def detections_from_maps(
    maps: np.ndarray, windows: np.ndarray, mode: str = "grid", extractor=None,
    saturation=UINT8_MAX, sigma: float = SIGMA,
) -> list[np.ndarray]:
    """Turn output maps into per-frame detections (n_i, 3) = (row, col, score), LR pixels.

    Parameters
    ----------
    maps : ndarray of shape (N, 33, 33)
        Output maps (grey levels).
    windows : ndarray of shape (N, 5, 11, 11)
        The input windows (used by the ``points`` extractor only).
    mode : {"grid", "points", "snapped"}
        ``grid``: every cell ≥ 70 is a detection at its cell centre (the reference rule).
        ``points``: sub-pixel points from ``extractor(maps, windows, saturation)``.
        ``snapped``: those points at their nearest free grid node (:mod:`models.snap`).
    extractor : callable, optional
        ``(maps (B, 33, 33), windows (B, 5, 11, 11), saturation (B,)) -> list of (n, 3)``;
        defaults to ``models.extract.extract_points`` with its default settings and the PSF
        ``sigma``.
    saturation : float or ndarray of shape (N,)
        Level at which the windows' pixels clip (``Predictions.saturation``; 255 for raw
        uint8 windows).
    sigma : float
        PSF std (px) of the default extractor's physics fit (``Predictions.sigma``).
    """
    if mode == "grid":
        return grid_detections(maps)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if extractor is None:
        def extractor(m, w, s):
            return extract_points(m, w, saturation=s, sigma=sigma)
    sat = np.broadcast_to(np.asarray(saturation, dtype=np.float64), (len(maps),))
    points = list(extractor(maps, windows, sat))
    if len(points) != len(maps):
        raise ValueError(f"the extractor returned {len(points)} frames for {len(maps)} maps")
    return snapped_detections(points) if mode == "snapped" else points


def evaluate_model(
    model: UnmixingModel,
    dataset: SeqDataset,
    mode: str = "grid",
    batch_size: int = 256,
    extractor=None,
) -> dict:
    """CSO-mAP of ``model`` on ``dataset`` (evaluated frames 2 … T−3 of every trajectory).

    Returns
    -------
    dict
        ``mAP``, ``AP05`` … ``AP25`` (fractions 0..1), ``frames`` (frames scored),
        ``forward_s`` and ``windows_per_s`` (forward time only).
    """
    pred = predict_maps(model, dataset, batch_size)
    return {**score_predictions(pred, dataset, mode, extractor),
            **speed_fields(len(pred.frames), pred.forward_s)}


def score_predictions(pred: Predictions, dataset: SeqDataset, mode: str = "grid",
                      extractor=None) -> dict[str, float]:
    """``mAP``, ``AP05`` … ``AP25`` (fractions) of predicted maps in ``mode`` (:data:`MODES`)."""
    dets = detections_from_maps(pred.maps_for(mode), pred.windows, mode, extractor,
                                pred.saturation, pred.sigma)
    return summarize(match_detections(dets, ground_truths(dataset, pred.frames)))


def speed_fields(frames: int, forward_s: float) -> dict:
    """``frames`` scored, ``forward_s`` seconds of forward calls, and their ratio."""
    rate = frames / forward_s if forward_s > 0 else float("inf")
    return {"frames": frames, "forward_s": forward_s, "windows_per_s": rate}


def count_macs(model: UnmixingModel, window: np.ndarray, frame_index: int) -> int:
    """MACs of one forward over one window (FLOPs / 2 by ``FlopCounterMode``).

    Parameters
    ----------
    window : ndarray of shape (5, 11, 11)
        A real input window (ISTA's cost depends on its data through the iteration count).
    frame_index : int
        Index of its middle frame within the trajectory.
    """
    device = _model_device(model)
    w = torch.as_tensor(window, dtype=model_dtype(model), device=device)[None]
    t = torch.tensor([frame_index], dtype=torch.int64, device=device)
    with _inference(model), FlopCounterMode(display=False) as counter:
        model(w, t)
    return counter.get_total_flops() // 2


def count_params(model: torch.nn.Module) -> int:
    """Number of learned parameters (buffers such as Φ and Qinit are not counted)."""
    return sum(p.numel() for p in model.parameters())
