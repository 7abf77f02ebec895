"""Scoring a live run against the simulator's truth: CSO-mAP, and GOSPA of the points and of the
tracks, per frame, averaged.

**CSO-mAP** (:func:`models.metric.cso_map`, points mode) is computed at frame level over
the unmixed targets of the *detected* groups: a truth group is detected in frame t when its
reference lies inside the crop of one of frame t's windows (the nearest window centre wins
when several crops hold it). The simulator's messages carry sub-targets, not references,
so a group's reference is taken as the mean of its sub-targets (within 0.33 px of the true
reference point). Per frame, the detections are the points of the windows that detected a
group and the ground truth is the sub-targets of those groups. How many truth groups were
detected is reported beside the mAP, since the mAP says nothing about missed groups.

**End-to-end CSO-mAP** (``cso_map_end_to_end``) pools *all* points of a frame against *all*
its true sub-targets, and counts every frame whose truth reached the scorer but whose points
never did (dropped inside the chain, ``frames_lost``) as a frame with no detections: a group
missed by the detector and a frame lost to overload both cost what they cost the user. This
is the figure that compares ways of shedding load (dropping frames against skipping work).

**Detection** (``detection``): the detector's blobs against the truth groups, as the IRSTD
field scores detectors (:mod:`stages.detection_metrics`): Pd (a group is found by a blob
centroid within 3 px of its sub-targets' brightness-weighted centroid) and Fa (the areas
of the blobs that found no group over all pixels); no IoU, since blobs carry no pixel masks
(``python -m stages.detector_eval`` gives it offline).

**GOSPA** (α = 2, cut-off ``c`` px, order ``p``) compares *all* true sub-targets of a frame
with *all* unmixed points of that frame:

.. math::

    d_p^{(c, 2)}(X, Y)^p = \\min_{\\gamma} \\sum_{(i, j) \\in \\gamma} d(x_i, y_j)^p
        + \\frac{c^p}{2} (|X| - |\\gamma|) + \\frac{c^p}{2} (|Y| - |\\gamma|)

over assignments γ of pairs closer than c. The three terms are the localisation, missed and
false parts (in units of px^p; for p = 1 they add up to the GOSPA distance, in px). They are
averaged over the scored frames; "missed" is exactly the unmixing failure of merged targets.

**Tracking score.** The same GOSPA compares all true sub-targets with the confirmed *tracks*
of the frame (the tracker's output, coasting tracks included), plus the number of **identity
switches**: a true sub-target paired (closer than c) with a track id other than the one it was
last paired with. A sub-target is identified by its sensor, its group and its rank among the
group's sub-targets in the frame's truth (the simulator lists them in a fixed order).

**Several sensors.** Every figure is pooled over all frames of all sensors (the summary's
top-level keys), and also kept per sensor: when frames of more than one sensor were scored,
the summary holds ``per_sensor``, sensor id (a string, as JSON keys are) -> the same keys
for that sensor's frames alone.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.metric import cso_map
from stages.base import SeqJoin, Stage
from stages.detection_metrics import DetectionScore, weighted_centroids
from stages.messages import (
    PATCH,
    Blob,
    Blobs,
    Frame,
    Message,
    Point,
    Points,
    Track,
    Tracks,
    TruthPoint,
    WindowInfo,
    Windows,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GospaTerms:
    """GOSPA of one frame (α = 2).

    Attributes
    ----------
    distance : float
        (localisation + missed + false)^(1/p), px.
    localisation, missed, false : float
        The three terms, px^p.
    assigned : int
        Number of truth/estimate pairs closer than c.
    """

    distance: float
    localisation: float
    missed: float
    false: float
    assigned: int


def gospa(truth: np.ndarray, estimates: np.ndarray, c: float = 2.0, p: float = 1.0) -> GospaTerms:
    """GOSPA metric with α = 2 and its decomposition (see :func:`gospa_pairs`).

    Examples
    --------
    >>> gospa(np.array([[0.0, 0.0]]), np.zeros((0, 2)), c=2.0, p=1.0).missed
    1.0
    """
    return gospa_pairs(truth, estimates, c, p)[0]


def gospa_pairs(
    truth: np.ndarray, estimates: np.ndarray, c: float = 2.0, p: float = 1.0
) -> tuple[GospaTerms, np.ndarray]:
    """GOSPA metric with α = 2, its decomposition and the optimal assignment.

    Parameters
    ----------
    truth : ndarray of shape (m, 2)
        True (row, col) positions, px.
    estimates : ndarray of shape (n, 2)
        Estimated (row, col) positions, px.
    c : float
        Cut-off distance (px): farther pairs count as one missed plus one false target.
    p : float
        Order, >= 1.

    Returns
    -------
    terms : GospaTerms
    pairs : ndarray of shape (assigned, 2), int64
        (truth index, estimate index) of the pairs closer than c.
    """
    if c <= 0 or p < 1:
        raise ValueError(f"GOSPA needs c > 0 and p >= 1, got c={c}, p={p}")
    x = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    y = np.asarray(estimates, dtype=np.float64).reshape(-1, 2)
    dist = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1)  # (m, n)
    # A pair at distance >= c costs as much as leaving both unassigned (c^p/2 + c^p/2).
    rows, cols = linear_sum_assignment(np.minimum(dist, c) ** p)
    close = dist[rows, cols] < c
    assigned = int(close.sum())
    localisation = float(np.sum(dist[rows[close], cols[close]] ** p))
    half = c**p / 2
    missed = half * (len(x) - assigned)
    false = half * (len(y) - assigned)
    terms = GospaTerms(
        distance=(localisation + missed + false) ** (1 / p),
        localisation=localisation,
        missed=missed,
        false=false,
        assigned=assigned,
    )
    return terms, np.column_stack([rows[close], cols[close]]).astype(np.int64)


def group_references(truth: Sequence[TruthPoint]) -> dict[int, np.ndarray]:
    """Group id -> (row, col) reference proxy: the mean of the group's sub-targets."""
    groups: dict[int, list[tuple[float, float]]] = {}
    for p in truth:
        groups.setdefault(p.group, []).append((p.row, p.col))
    return {g: np.mean(pos, axis=0) for g, pos in groups.items()}


def target_keys(truth: Sequence[TruthPoint]) -> list[tuple[int, int]]:
    """Identity of each true sub-target: (group, rank among the group's sub-targets).

    Examples
    --------
    >>> target_keys([TruthPoint(7, 0.0, 0.0, 1.0), TruthPoint(7, 1.0, 0.0, 1.0),
    ...              TruthPoint(2, 5.0, 5.0, 1.0)])
    [(7, 0), (7, 1), (2, 0)]
    """
    seen: dict[int, int] = {}
    keys = []
    for p in truth:
        keys.append((p.group, seen.get(p.group, 0)))
        seen[p.group] = keys[-1][1] + 1
    return keys


def detected_groups(
    references: dict[int, np.ndarray], windows: Sequence[WindowInfo]
) -> dict[int, int]:
    """Group id -> index (in ``windows``) of the window that detected it (groups without one
    are left out).

    A window detects a group when the group's reference lies inside its crop
    [origin − ½, origin + 11 − ½) on both axes; the window with the nearest crop centre wins.
    """
    found = {}
    for group, ref in references.items():
        best, best_d = None, np.inf
        for index, w in enumerate(windows):
            lo = np.array([w.origin_row, w.origin_col]) - 0.5
            if np.all(ref >= lo) and np.all(ref < lo + PATCH):
                d = float(np.hypot(*(ref - (lo + PATCH / 2))))
                if d < best_d:
                    best, best_d = index, d
        if best is not None:
            found[group] = best
    return found


@dataclass(frozen=True)
class ScoringConfig:
    """Options of :class:`Scoring`.

    Attributes
    ----------
    c : float
        GOSPA cut-off (px).
    p : float
        GOSPA order.
    output : str or None
        JSON file written at the end of the stream with :meth:`ScoreAccumulator.summary`.
    max_pending : int
        Frames held while their windows, points and tracks are on their way (the points of
        frame t arrive at least 2 frames after it, later when the unmixer lags).
    map_window : int
        The CSO-mAP pools the detections of the last ``map_window`` scored frames (default
        9,000: 6 minutes at 25 Hz), so an endless run keeps bounded memory; every other score
        is a running total over all frames.
    """

    c: float = 2.0
    p: float = 1.0
    output: str | None = None
    max_pending: int = 64
    map_window: int = 9000

    def __post_init__(self) -> None:
        if self.c <= 0 or self.p < 1:
            raise ValueError(f"GOSPA needs c > 0 and p >= 1, got c={self.c}, p={self.p}")
        if self.map_window < 1:
            raise ValueError(f"map_window must be >= 1 frame, got {self.map_window}")


_GOSPA_KEYS = ("distance", "localisation", "missed", "false")


class _GospaMean:
    """Running mean of per-frame GOSPA terms (constant memory)."""

    def __init__(self) -> None:
        self.frames = 0
        self.sums = dict.fromkeys(_GOSPA_KEYS, 0.0)

    def add(self, terms: GospaTerms) -> None:
        self.frames += 1
        for key in _GOSPA_KEYS:
            self.sums[key] += getattr(terms, key)

    def summary(self, c: float, p: float) -> dict:
        """Mean distance and terms over frames (None when there are no frames), plus c and p."""
        mean = {k: v / self.frames if self.frames else None for k, v in self.sums.items()}
        return {**mean, "c": c, "p": p}


def _truth_array(truth: Sequence[TruthPoint]) -> np.ndarray:
    """(m, 3) = (row, col, brightness) of every true sub-target."""
    return np.array([[q.row, q.col, q.brightness] for q in truth]).reshape(-1, 3)


class ScoreAccumulator:
    """Collects per-frame scores; :meth:`summary` gives the averages and the CSO-mAP."""

    def __init__(self, c: float = 2.0, p: float = 1.0, map_window: int = 9000) -> None:
        self.c, self.p = c, p
        # the CSO-mAP pools its frames' detections: the last map_window frames are kept
        self._detections: deque[np.ndarray] = deque(maxlen=map_window)
        self._ground_truths: deque[np.ndarray] = deque(maxlen=map_window)
        self._all_detections: deque[np.ndarray] = deque(maxlen=map_window)
        self._all_truths: deque[np.ndarray] = deque(maxlen=map_window)
        self._lost = 0
        self._gospa = _GospaMean()
        self._track_gospa = _GospaMean()
        self._last_track: dict[tuple[int, int, int], int] = {}  # (sensor, group, rank) -> id
        self._switches = 0
        self._tracks = 0
        self._groups = 0
        self._detected = 0
        self._windows = 0
        self._points = 0
        self.detection = DetectionScore()

    def add(
        self,
        truth: Sequence[TruthPoint],
        windows: Sequence[WindowInfo],
        points: Sequence[Point],
        tracks: Sequence[Track],
        sensor: int = 0,
    ) -> GospaTerms:
        """Score one frame of ``sensor``; returns the GOSPA terms of its points."""
        refs = group_references(truth)
        detected = detected_groups(refs, windows)
        detecting = set(detected.values())
        found = np.array([[q.row, q.col, q.score] for q in points]).reshape(-1, 3)
        targets = _truth_array(truth)
        in_detecting = np.array([q.window_id in detecting for q in points], dtype=bool)
        in_detected = np.array([q.group in detected for q in truth], dtype=bool)
        self._detections.append(found[in_detecting])
        self._ground_truths.append(targets[in_detected])
        self._all_detections.append(found)
        self._all_truths.append(targets)
        terms = gospa(targets[:, :2], found[:, :2], self.c, self.p)
        self._gospa.add(terms)
        self._score_tracks(truth, targets, tracks, sensor)
        self._groups += len(refs)
        self._detected += len(detected)
        self._windows += len(windows)
        self._points += len(points)
        return terms

    def add_blobs(self, truth: Sequence[TruthPoint], blobs: Sequence[Blob], pixels: int) -> None:
        """Score one frame's detector output (Pd, Fa); ``pixels`` = the frame's pixel count."""
        centres = weighted_centroids(_truth_array(truth), np.array([q.group for q in truth]))
        self.detection.add(np.array([[b.row, b.col] for b in blobs]).reshape(-1, 2),
                           np.array([b.area for b in blobs]), centres, pixels)

    def add_lost(self, truth: Sequence[TruthPoint]) -> None:
        """Count a frame whose points never came: all its targets missed (end-to-end mAP)."""
        self._lost += 1
        self._all_detections.append(np.zeros((0, 3)))
        self._all_truths.append(_truth_array(truth))

    def _score_tracks(self, truth: Sequence[TruthPoint], targets: np.ndarray,
                      tracks: Sequence[Track], sensor: int) -> None:
        terms, pairs = gospa_pairs(
            targets[:, :2],
            np.array([[t.row, t.col] for t in tracks]),
            self.c,
            self.p,
        )
        self._track_gospa.add(terms)
        self._tracks += len(tracks)
        keys = [(sensor, *key) for key in target_keys(truth)]
        for ti, ej in pairs:
            key, track_id = keys[ti], tracks[ej].track_id
            if self._last_track.get(key, track_id) != track_id:
                self._switches += 1
            self._last_track[key] = track_id

    def summary(self) -> dict:
        """Averages over the scored frames.

        Returns
        -------
        dict with ``frames``; ``groups`` and ``groups_detected`` (summed over frames) and
        ``group_detection_rate``; ``windows`` and ``points`` (summed); ``cso_map`` (the
        :func:`~models.metric.cso_map` dict: mAP, AP05 … AP25, fractions, plus
        ``mode: "points"``, ``level: "frame"`` and ``frames``, the frames it pools: the last
        ``map_window``); ``frames_lost`` (frames whose points never came) and
        ``cso_map_end_to_end`` (same keys; all points against all targets, lost frames
        included, see the module docstring); ``gospa`` of the points (mean
        ``distance``, ``localisation``, ``missed``, ``false`` per frame, plus ``c`` and
        ``p``); ``tracking``: ``gospa`` of the tracks (same keys), ``id_switches`` and
        ``tracks`` (summed); ``detection``: the detector's Pd and Fa (see the module
        docstring and :meth:`stages.detection_metrics.DetectionScore.summary`). Averages of
        nothing are None (valid JSON, unlike NaN).
        """
        c, p = self.c, self.p
        return {
            "frames": self._gospa.frames,
            "groups": self._groups,
            "groups_detected": self._detected,
            "group_detection_rate": self._detected / self._groups if self._groups else None,
            "windows": self._windows,
            "points": self._points,
            "cso_map": {
                "mode": "points",
                "level": "frame",
                "frames": len(self._detections),
                **cso_map(list(self._detections), list(self._ground_truths)),
            },
            "frames_lost": self._lost,
            "cso_map_end_to_end": {
                "mode": "points",
                "level": "frame",
                "frames": len(self._all_detections),
                **cso_map(list(self._all_detections), list(self._all_truths)),
            },
            "detection": self.detection.summary(),
            "gospa": self._gospa.summary(c, p),
            "tracking": {
                "gospa": self._track_gospa.summary(c, p),
                "id_switches": self._switches,
                "tracks": self._tracks,
            },
        }


class Scoring(Stage):
    """Sink: frames (truth) + blobs + windows + points + tracks of the same seq → running
    scores.

    Frames without truth (``truth is None``) cannot be scored and are counted in
    :attr:`skipped`; frames whose windows, points or tracks never came are scored as lost
    (``frames_lost``, and in ``cso_map_end_to_end``). With several sensors every frame is
    scored twice: in the pooled scores and in its sensor's (see the module docstring). At the
    end of the stream the summary is logged and, if ``output`` is set, written as JSON.
    """

    Config = ScoringConfig
    INPUTS = ("frames", "blobs", "windows", "points", "tracks")
    OUTPUT = None

    def __init__(self, config: ScoringConfig | None = None) -> None:
        super().__init__(config)
        self.scores = self._accumulator()
        #: sensor -> the scores of its frames alone (kept once a second sensor shows up)
        self.sensor_scores: defaultdict[int, ScoreAccumulator] = defaultdict(self._accumulator)
        self._first_sensor: int | None = None
        self.join = SeqJoin((Frame, Blobs, Windows, Points, Tracks), self.config.max_pending,
                            on_drop=self._lost)
        #: Frames that arrived without truth.
        self.skipped = 0

    def _accumulator(self) -> ScoreAccumulator:
        return ScoreAccumulator(self.config.c, self.config.p, self.config.map_window)

    def _accumulators(self, sensor: int) -> tuple[ScoreAccumulator, ...]:
        """Where a frame of ``sensor`` is scored: the pooled scores and, once frames of a
        second sensor came, that sensor's own (the first sensor's start as a copy of the pooled
        ones, which held its frames alone until then)."""
        if self._first_sensor is None:
            self._first_sensor = sensor
        if not self.sensor_scores:
            if sensor == self._first_sensor:
                return (self.scores,)
            self.sensor_scores[self._first_sensor] = copy.deepcopy(self.scores)
        return self.scores, self.sensor_scores[sensor]

    def process(self, msg: Message) -> Iterable[Message]:
        parts = self.join.add(msg)
        if parts is None:
            return ()
        frame = parts[Frame]
        if frame.truth is None:
            self.skipped += 1
            return ()
        for scores in self._accumulators(frame.sensor):
            scores.add(frame.truth, parts[Windows].windows, parts[Points].points,
                       parts[Tracks].tracks, frame.sensor)
            scores.add_blobs(frame.truth, parts[Blobs].blobs, frame.image.size)
        return ()

    def _lost(self, parts: dict) -> None:
        frame = parts.get(Frame)
        if frame is not None and frame.truth is not None:
            for scores in self._accumulators(frame.sensor):
                scores.add_lost(frame.truth)

    def flush(self) -> Iterable[Message]:
        self.join.drain()
        summary = self.summary()
        logger.info("scores: %s", json.dumps(summary))
        if self.config.output:
            path = Path(self.config.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return ()

    def summary(self) -> dict:
        """:meth:`ScoreAccumulator.summary` of all frames plus ``frames_without_truth``, and
        ``per_sensor`` (sensor id as a string -> its own :meth:`ScoreAccumulator.summary`)
        when frames of more than one sensor were scored."""
        out = {**self.scores.summary(), "frames_without_truth": self.skipped}
        if self.sensor_scores:
            out["per_sensor"] = {str(sensor): self.sensor_scores[sensor].summary()
                                 for sensor in sorted(self.sensor_scores)}
        return out
