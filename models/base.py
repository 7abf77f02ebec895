"""The one model interface shared by training, evaluation and the live unmixer.

Every unmixer is a ``torch.nn.Module`` subclass of :class:`UnmixingModel`:

``forward(windows, frame_index) -> (maps, aux_losses)``

- ``windows``: tensor of shape (B, 5, 11, 11), float32, raw grey levels; window b holds
  frames t−2 … t+2 of one trajectory/track, and the map is predicted for the middle frame t.
- ``frame_index``: tensor of shape (B,), int64, index t of the middle frame within its
  trajectory (0-based; SeqCSIST evaluates t = 2 … 17). Only time-aware models use it.
- ``maps``: tensor of shape (B, 33, 33), float32, brightness per HR cell (grey levels).
- ``aux_losses``: dict of named scalar tensors added to the training loss (may be empty);
  they are only computed when the model is in training mode.

Single-frame models use the middle frame ``windows[:, 2]``.

Optics: :meth:`UnmixingModel.set_psf` tells a model the PSF σ of the data it runs on (a float
for the whole batch, or one value per window); models whose layers use the optics (a σ input,
:class:`~models.multiframe.fastunmix.FastUnmixer` with ``psf_input``) read ``psf_sigma``.

Outputs: ``forward`` returns the model's map (``output = "map"``, read by every mode). A model
with a grid head (a ``grid_head`` submodule, :mod:`models.layers.grid_head`) also has a second
output, chosen with ``set_output("grid")``: maps trained for the reference's grid rule, which
the harness scores in ``grid`` mode while the points extractor keeps reading the first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sim.geometry import HR, PATCH, SIGMA, WINDOW


class UnmixingModel(nn.Module):
    """Base class: holds Φ and Qinit as buffers and checks input shapes."""

    #: True for models whose parameters are learned (ISTA has none).
    trainable: bool = True
    #: True for models split into per-frame work that does not depend on the window and
    #: per-window work: ``frame_features(frames (N, 11, 11)) -> (features (N, F), aux)`` and
    #: ``window_maps(features (B, 5, F), frame_index (B,)) -> (maps (B, 33, 33), aux)``.
    #: The live unmixer then computes each frame's features once (DeRefNet).
    shares_frame_features: bool = False
    #: What :meth:`forward` returns: "map" or, on a model with a grid head, "grid".
    output: str = "map"
    #: PSF std (px) of the data the model runs on (:meth:`set_psf`): a float, or a tensor
    #: (B,) with one value per window of the next forward.
    psf_sigma: float | torch.Tensor = SIGMA

    def __init__(self, phi, qinit=None) -> None:
        super().__init__()
        phi_t = torch.tensor(np.asarray(phi), dtype=torch.float32)  # (121, 1089)
        self.register_buffer("phi", phi_t)
        q = torch.zeros(phi_t.shape[1], phi_t.shape[0]) if qinit is None else qinit
        self.register_buffer("qinit", torch.as_tensor(q, dtype=torch.float32))  # (1089, 121)

    def set_output(self, output: str) -> None:
        """Choose what :meth:`forward` returns: ``"map"`` or (with a grid head) ``"grid"``."""
        if output not in self.outputs():
            raise ValueError(
                f"{type(self).__name__} has the outputs {self.outputs()}, not {output!r}")
        self.output = output

    def outputs(self) -> tuple[str, ...]:
        """``("map", "grid")`` for a model with a grid head, else ``("map",)``."""
        return ("map", "grid") if getattr(self, "grid_head", None) is not None else ("map",)

    def set_psf(self, sigma: float | torch.Tensor) -> None:
        """Tell the model the PSF σ (px) of its input: a float for every window, or a
        tensor (B,) with one value per window of the next :meth:`forward`."""
        self.psf_sigma = sigma if torch.is_tensor(sigma) else float(sigma)

    def adapt_state(self, state: dict) -> dict:
        """A training run's ``init_weights`` state dict made to fit this model (by default
        unchanged; a model that gained input channels pads their weights)."""
        return state

    def init_missing(self, missing: list[str]) -> None:
        """Initialise the parameters a training run's ``init_weights`` file lacked (their
        ``state_dict`` names); by default they keep their fresh initialisation."""

    def set_qinit(self, qinit) -> None:
        """Replace Qinit, e.g. after fitting it on a training split (shape (1089, 121))."""
        self.qinit.copy_(torch.as_tensor(qinit, dtype=torch.float32))

    @staticmethod
    def check_input(windows: torch.Tensor, frame_index: torch.Tensor) -> None:
        if windows.ndim != 4 or tuple(windows.shape[1:]) != (WINDOW, PATCH, PATCH):
            raise ValueError(
                f"windows must have shape (B, {WINDOW}, {PATCH}, {PATCH}), "
                f"got {tuple(windows.shape)}"
            )
        if frame_index.shape != windows.shape[:1]:
            raise ValueError(
                f"frame_index must have shape ({windows.shape[0]},), got {tuple(frame_index.shape)}"
            )

    def forward_sequences(self, frames: torch.Tensor, start_index: torch.Tensor):
        """Maps of every middle frame of frame sequences.

        Parameters
        ----------
        frames : tensor of shape (N, L, 11, 11), float32
            N sequences of L ≥ 5 consecutive frames (grey levels).
        start_index : tensor of shape (N,), int64
            Index of each sequence's first frame within its trajectory.

        Returns
        -------
        maps : tensor of shape (N, L − 4, 33, 33)
            Maps of frames 2 … L − 3 of every sequence, in order.
        aux_losses : dict
            As :meth:`forward`, over all windows.

        This default slides the window over each sequence and calls :meth:`forward` once for
        all N·(L − 4) windows; models that share per-frame work between the windows that
        contain a frame (DeRefNet) override it.
        """
        n, length = frames.shape[:2]
        n_win = length - WINDOW + 1
        offsets = torch.arange(n_win, device=frames.device)
        idx = offsets[:, None] + torch.arange(WINDOW, device=frames.device)[None]
        windows = frames[:, idx].reshape(n * n_win, WINDOW, *frames.shape[2:])
        middle = (start_index[:, None] + offsets[None] + WINDOW // 2).reshape(-1)
        maps, aux = self(windows, middle)
        self.check_maps(maps, n * n_win)
        return maps.view(n, n_win, HR, HR), aux

    def make_discriminator(self) -> nn.Module | None:
        """A new discriminator for adversarial training, or None (the default: not a GAN).

        GAN models (:mod:`models.sr`) return a module with ``discriminator_loss(fake, real)``
        and ``generator_loss(fake, real)`` (maps of shape (…, 33, 33), grey levels → scalar
        loss). The training harness owns it and its optimiser: it is neither part of the
        model's inference nor of its weights.
        """
        return None

    def check_maps(self, maps: torch.Tensor, n_windows: int) -> None:
        """Raise ValueError unless ``maps`` holds ``n_windows`` maps of shape (33, 33)."""
        if maps.numel() != n_windows * HR * HR:
            raise ValueError(
                f"{type(self).__name__} returned maps of shape {tuple(maps.shape)} for "
                f"{n_windows} windows; the model interface requires (B, {HR}, {HR})"
            )
