"""BID baseline (docs/reference.md §5.2, Table VII's "BID" row): not learned, single frame.

Despite its name the reference method is neither blind nor learned: a Landweber-type
iteration in the HR domain with a fixed 3×3 Gaussian PSF k (σ = 0.5 HR cells, normalised):

- u = bilinear ×3 upsampling of the middle LR frame to 33×33 (``align_corners=False``, so LR
  pixel p lands on HR cell 3p + 1, docs/reference.md §1.3); I₀ = u;
- I ← I − α·(k ⋆ I − u) with α = 0.001 (``'same'`` zero-padded correlation), at most 1 000
  iterations; a sample stops after the iteration whose residual max|k ⋆ I − u| < 0.1.

``faithful=True`` reproduces the two bugs of the reference script (docs/reference.md §5.2,
§8 #8), which explain much of its 14.40 in Table VII:

1. the PSF grid runs from −3//2 = −2 to 3//2 = 1, so the taps sit at {−2, −0.5, 1} and the
   kernel is asymmetric (the correct taps are {−1, 0, 1});
2. the LR frame reaches ``cv2.resize`` as a (121, 1) column, so the "image" it works on is
   column 5 of the true frame repeated over all 11 columns.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.base import UnmixingModel
from models.classical.per_sample import iterate_per_sample
from models.layers.gaussian import gaussian_kernel
from sim.geometry import HR, PATCH, WINDOW
from sim.phi import phi_matrix

PSF_SIZE = 3
PSF_SIGMA = 0.5  # HR cells


def bid_psf(faithful: bool = False) -> np.ndarray:
    """The normalised 3×3 Gaussian PSF (float32): symmetric taps, or the reference's buggy grid."""
    if faithful:
        taps = np.linspace(-PSF_SIZE // 2, PSF_SIZE // 2, PSF_SIZE)  # -2, -0.5, 1
    else:
        taps = np.arange(PSF_SIZE) - PSF_SIZE // 2  # -1, 0, 1
    return gaussian_kernel(taps, PSF_SIGMA)


def bid_image(frames: torch.Tensor, faithful: bool = False) -> torch.Tensor:
    """The LR image BID works on, (B, 11, 11): the frame itself, or (faithful) its column 5
    repeated over every column, as ``cv2.resize`` of the flattened (121, 1) frame gives."""
    if faithful:
        return frames[:, :, PATCH // 2 : PATCH // 2 + 1].expand_as(frames)
    return frames


class BidUnmixer(UnmixingModel):
    """BID on the middle frame of each window; no learned parameters.

    Parameters
    ----------
    faithful : bool
        Reproduce the reference script's PSF and resize bugs (see the module docstring).
    max_iter : int
        Iteration cap per sample.
    step : float
        Step α of the update.
    tol : float
        A sample stops once max|k ⋆ I − u| < ``tol`` (grey levels).
    """

    trainable = False

    def __init__(self, faithful: bool = False, max_iter: int = 1000, step: float = 0.001,
                 tol: float = 0.1) -> None:
        super().__init__(phi_matrix())
        if max_iter < 1 or step <= 0 or tol <= 0:
            raise ValueError(
                f"BID needs max_iter >= 1, step > 0 and tol > 0; got max_iter={max_iter}, "
                f"step={step}, tol={tol}"
            )
        self.faithful, self.max_iter, self.step, self.tol = faithful, max_iter, step, tol
        psf = torch.from_numpy(bid_psf(faithful))[None, None]
        self.register_buffer("psf", psf, persistent=False)  # (1, 1, 3, 3)
        self.config = {"faithful": faithful, "max_iter": max_iter, "step": step, "tol": tol}

    def forward(self, windows: torch.Tensor, frame_index: torch.Tensor):
        """Maps (B, 33, 33) float32 from windows (B, 5, 11, 11); no auxiliary losses."""
        self.check_input(windows, frame_index)
        image = bid_image(windows[:, WINDOW // 2], self.faithful)
        up = F.interpolate(image[:, None], size=(HR, HR), mode="bilinear", align_corners=False)

        def step(hr, rows):
            residual = F.conv2d(hr, self.psf, padding="same") - up[rows]
            done = residual.flatten(1).abs().amax(dim=1) < self.tol
            return hr - self.step * residual, done

        hr, _ = iterate_per_sample(up, step, self.max_iter)
        return hr.view(-1, HR, HR), {}
