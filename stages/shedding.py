"""Load shedding in the unmixer: every frame goes on, some windows reuse their last map.

When the unmixer cannot unmix all windows of a frame within the frame's time budget, there
are two ways to shed load. The queue in front of it can drop whole frames (``drop_oldest``):
every window of a dropped frame is lost, and the tracker coasts. Or the unmixer can keep
every frame and skip the network for some of its windows: a skipped window gets its track's
last unmixed map, moved by the group's motion since then, and the extractor's physics fit
then places the targets on the window's *current* pixels starting from it (sub-targets
move a fraction of a pixel per frame). A reused map is less accurate than a fresh one, but
a frame that is dropped has no points at all; ``benchmarks/shedding.md`` measures which
costs more.

The rule (:class:`WindowShedder`):

- Every forward pass but the first (one-off set-up) is timed (wall time, so the load of
  the other processes on the machine is included); a line fixed + n · per-window is fitted
  to the last 32 passes (a forward pass of a few windows costs far more than its share of
  a large batch).
- A time credit grows by the budget with every frame (capped at two frames' worth, or one
  window's cost when that is more) and shrinks by the measured time of every forward pass;
  a frame may unmix ``floor((credit − fixed) / per-window)`` windows, possibly none, so a
  model slower than the frame rate for even one window still keeps up (it refreshes one
  window every few frames). Windows of tracks without a map yet are always unmixed (the credit goes
  negative, down to minus the cap, and later frames pay); the rest of the allowance goes
  to the windows whose map is the oldest (so every track is refreshed in turn), ties by
  blob id.
- The map is moved by the shift of the group's centre of light in the patch (the middle
  frame's pixels above 20 % of its peak) since the map was made, which holds both the
  group's motion and any change of the crop origin: 3 HR cells per LR pixel, by a
  5th-order spline (bilinear interpolation blurs the splats the extractor fits), zeros
  shifted in.
- Tracks absent from a frame forget their map, so the state is bounded by the live tracks.
  With several sensors, the maps are kept per sensor (blob ids are unique per sensor) and a
  frame forgets only the absent tracks of its own sensor; the time credit and the cost
  model are shared (one unmixer, one budget per frame of any sensor).

The two rules under overload are compared in ``benchmarks/shedding.md``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from sim.geometry import RATIO, WINDOW

#: Spline order of the map shift. Measured on the live scene (fastunmix, 6 groups, CSO-mAP
#: points): a map shifted by (0.37, −0.21) px and back scores 60.0 with bilinear (order 1)
#: interpolation, which blurs the brightness splats, 79.1 with order 3 and 82.7 with order 5
#: (88.8 unshifted); maps reused 1 frame later score 79.5 (order 1) and 85.0 (order 5).
SPLINE_ORDER = 5
#: Forward passes the cost model is fitted on (the most recent ones).
COST_SAMPLES = 32
#: Pixels below this fraction of the middle frame's peak are left out of the centre of light.
LIGHT_FLOOR = 0.2


def centres_of_light(patches: np.ndarray) -> np.ndarray:
    """Centre of light (N, 2) of the middle frame of windows, in patch pixels (row, col).

    Parameters
    ----------
    patches : ndarray of shape (N, 5, 11, 11)
        Background-subtracted windows, grey levels.
    """
    middle = np.asarray(patches, dtype=np.float64)[:, WINDOW // 2]
    peak = middle.max(axis=(1, 2), initial=0.0)
    weight = np.clip(middle - LIGHT_FLOOR * peak[:, None, None], 0.0, None)
    mass = weight.sum(axis=(1, 2))
    mass[mass == 0] = 1.0  # a window with no light: centre (0, 0), no shift
    rows, cols = np.indices(middle.shape[1:])
    return np.stack([(weight * rows).sum(axis=(1, 2)), (weight * cols).sum(axis=(1, 2))],
                    axis=1) / mass[:, None]


@dataclass
class _Kept:
    map: np.ndarray  # (33, 33) the last unmixed map
    centre: np.ndarray  # (2,) centre of light (patch px) of that window
    age: int = 0  # frames since the map was made


class WindowShedder:
    """Chooses the windows to unmix within a per-frame budget and predicts the others.

    Parameters
    ----------
    budget_ms : float
        Wall time the unmixer may spend on one frame's windows.
    """

    def __init__(self, budget_ms: float) -> None:
        if not budget_ms > 0:
            raise ValueError(f"frame_budget_ms must be > 0, got {budget_ms}")
        self.budget_ms = budget_ms
        #: Measured wall time per unmixed window and per forward pass (ms); cost_ms is None
        #: before the first forward pass.
        self.cost_ms: float | None = None
        self.fixed_ms = 0.0
        self._samples: deque[tuple[int, float]] = deque(maxlen=COST_SAMPLES)
        #: Time (ms) the unmixer may still spend: + budget per frame, − each forward pass.
        self.credit_ms = 0.0
        self._warm = False
        self._kept: dict[int, dict[int, _Kept]] = {}  # sensor -> blob id -> its last map
        self.unmixed = 0
        self.reused = 0

    def choose(self, blob_ids: list[int], sensor: int = 0) -> np.ndarray:
        """Which windows of a frame of ``sensor`` to unmix: a boolean mask over ``blob_ids``.

        Each call adds one frame's budget to the time credit (capped at two frames' worth, or
        one window's cost when that is more).
        """
        self.credit_ms = min(self.credit_ms + self.budget_ms, self._cap())
        n = len(blob_ids)
        allowed = n if self.cost_ms is None else math.floor(
            (self.credit_ms - self.fixed_ms) / self.cost_ms)
        if allowed >= n:
            return np.ones(n, dtype=bool)
        kept = self._kept.get(sensor, {})
        mask = np.array([blob_id not in kept for blob_id in blob_ids], dtype=bool)
        stale = sorted(np.flatnonzero(~mask), key=lambda i: (-kept[blob_ids[i]].age,
                                                              blob_ids[i]))
        mask[stale[:max(0, allowed - int(mask.sum()))]] = True
        return mask

    def _cap(self) -> float:
        """Largest credit (and largest debt): two frames' budget, or one window's cost."""
        if self.cost_ms is None:
            return 2 * self.budget_ms
        return max(2 * self.budget_ms, self.fixed_ms + self.cost_ms)

    def record_cost(self, elapsed_ms: float, windows: int) -> None:
        """Account one forward pass of ``windows`` windows that took ``elapsed_ms``: spent from
        the credit, and a sample of the cost model."""
        if windows < 1:
            return
        if not self._warm:  # the first pass carries one-off set-up: not a sample
            self._warm = True
            return
        self.credit_ms = max(self.credit_ms - elapsed_ms, -self._cap())
        self._samples.append((windows, elapsed_ms))
        n, ms = np.array(self._samples, dtype=np.float64).T
        if np.ptp(n) > 0:  # cost = fixed + n · per window, least squares on recent passes
            per_window, fixed = np.polyfit(n, ms, 1)
            if per_window > 0 and fixed >= 0:
                self.cost_ms, self.fixed_ms = float(per_window), float(fixed)
                return
        self.cost_ms, self.fixed_ms = float(ms.sum() / n.sum()), 0.0

    def complete(self, blob_ids: list[int], mask: np.ndarray, maps: np.ndarray,
                 centres: np.ndarray, sensor: int = 0) -> np.ndarray:
        """Fill the skipped windows' maps and remember the fresh ones.

        Parameters
        ----------
        blob_ids : list of int
            The frame's windows.
        mask : ndarray of shape (N,), bool
            Windows whose ``maps`` row was unmixed now.
        maps : ndarray of shape (N, 33, 33)
            Maps; rows outside ``mask`` are overwritten with predictions.
        centres : ndarray of shape (N, 2)
            Centres of light of the windows (:func:`centres_of_light`).
        sensor : int
            The frame's sensor: only its tracks' maps are looked up and forgotten.

        Returns
        -------
        ``maps``.
        """
        from scipy import ndimage  # here: the unmixer imports this module, few runs shed load

        present = set(blob_ids)
        kept_maps = {k: v for k, v in self._kept.get(sensor, {}).items() if k in present}
        self._kept[sensor] = kept_maps
        for i, blob_id in enumerate(blob_ids):
            if mask[i]:
                kept_maps[blob_id] = _Kept(maps[i].copy(), centres[i].copy())
                self.unmixed += 1
                continue
            kept = kept_maps[blob_id]
            kept.age += 1
            shift = RATIO * (centres[i] - kept.centre)
            maps[i] = ndimage.shift(kept.map, shift, order=SPLINE_ORDER, mode="constant",
                                    cval=0.0)
            self.reused += 1
        return maps

    def summary(self) -> dict[str, float | int | None]:
        """Windows unmixed and reused so far, and the fitted costs (ms)."""
        return {"windows_unmixed": self.unmixed, "windows_reused": self.reused,
                "cost_ms_per_window": self.cost_ms, "cost_ms_per_pass": self.fixed_ms,
                "frame_budget_ms": self.budget_ms}
