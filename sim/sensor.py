"""The sensor profile: what the chain must know of the optics and the detector in front of it.

One ``sensor:`` section of a pipeline config (docs/scenes.md, "The sensor profile"); the
stages that need a value take it from there unless their own config sets it:

- ``psf_sigma`` (px): the PSF std. The simulator renders with it, the unmixer tells the model
  (:meth:`models.base.UnmixingModel.set_psf`; weights not trained for it say so at start-up),
  the extractor's physics fit uses it. ``python -m models calibrate`` measures it.
- ``gain`` and ``offset``: the sensor's raw counts to the models' grey levels,
  grey = gain · (raw − offset) (a 14-bit sensor whose targets peak near 4,000 counts over a
  pedestal of 1,000: gain ≈ 0.08, offset 1,000). Applied by the cropper.
- ``saturation`` (raw counts): where the sensor clips (None: the frame dtype's maximum).
- ``noise_sigma`` (grey levels): the pixel noise std the extractor weighs the fit with (None:
  estimated per window).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.geometry import SIGMA


@dataclass(frozen=True)
class SensorProfile:
    """See the module docstring. Units: px, grey levels per raw count, raw counts."""

    psf_sigma: float = SIGMA
    gain: float = 1.0
    offset: float = 0.0
    saturation: float | None = None
    noise_sigma: float | None = None

    def __post_init__(self) -> None:
        if not 0.2 <= self.psf_sigma <= 2.0:
            raise ValueError(f"psf_sigma {self.psf_sigma} px is outside 0.2..2.0; measure it "
                             "with `python -m models calibrate DATA`")
        if not self.gain > 0:
            raise ValueError(f"gain must be > 0 grey levels per raw count, got {self.gain}")
        if self.saturation is not None and not self.saturation > self.offset:
            raise ValueError(f"saturation {self.saturation} must lie above the offset "
                             f"{self.offset} (raw counts), or be null (the dtype's maximum)")
        if self.noise_sigma is not None and not self.noise_sigma > 0:
            raise ValueError(f"noise_sigma must be > 0 grey levels or null (estimated), got "
                             f"{self.noise_sigma}")
