"""CSO-mAP, the SeqCSIST detection metric, exactly as the reference defines it
(docs/reference.md §3).

Positions are (row, col) in LR pixels (xc = row, yc = col); distances are Euclidean, float64.

Rules, per distance threshold δ:

1. In each frame, every detection is compared with its **nearest** ground-truth target only
   (first one on a distance tie). Detections are visited by descending score; a detection is
   a true positive iff its nearest-GT distance is ≤ δ (inclusive) **and** that GT is still
   unmatched; otherwise it is a false positive, even when another free GT lies within δ.
   Only a true positive marks a GT as matched. A frame without GT makes all its detections FPs.
2. The detections of all frames are pooled and ranked by descending score; recall is
   cumulative TP over the number of GT targets of **all** frames (frames without detections
   still count); precision is cumulative TP / (TP + FP).
3. AP is the VOC all-point area under the precision envelope; mAP is the mean of the
   unrounded APs. No detection at all gives AP = 0.

Tie order (documented choice): equal scores keep the input order, both when matching inside
a frame and in the pooled ranking: frames in the order given, detections as listed within a
frame (a stable sort). The reference sorts with the unstable ``np.argsort(-score)``, which
leaves the order of ties undefined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sim.geometry import HR
from sim.phi import hr_centres

THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25)
#: Output cells below this brightness (grey levels) are discarded (docs/reference.md §3.1 step 2).
BRIGHTNESS_THRESHOLD = 70.0
#: Detections per chunk × GT per frame bounds the size of the distance array.
_CHUNK_ELEMENTS = 1 << 22


def ap_key(delta: float) -> str:
    """Result key of the AP at distance ``delta`` (LR pixels): 0.05 → ``"AP05"``."""
    return f"AP{round(delta * 100):02d}"


@dataclass(frozen=True)
class Matching:
    """Detections of all frames pooled, ranked by descending score (stable), with TP flags.

    Attributes
    ----------
    scores : ndarray of shape (D,), float64
        Scores in ranking order.
    tp : ndarray of shape (T, D), bool
        ``tp[k, i]``: ranked detection i is a true positive at ``thresholds[k]``.
    n_gt : int
        Number of GT targets over all frames.
    thresholds : tuple of float
        Distance thresholds δ in LR pixels.
    """

    scores: np.ndarray
    tp: np.ndarray
    n_gt: int
    thresholds: tuple[float, ...]


def _stack_frames(frames: Sequence, name: str, columns: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-frame (n_i, 3) arrays into values (D, 3) float64 and offsets (F + 1,).

    ``columns`` names the three columns for error messages.
    """
    rows, counts = [], []
    for i, frame in enumerate(frames):
        a = np.asarray(frame, dtype=np.float64)
        if a.size == 0:
            a = np.zeros((0, 3))
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"{name}[{i}] must have shape (n, 3) = ({columns}), got {a.shape}")
        rows.append(a)
        counts.append(len(a))
    values = np.concatenate(rows) if rows else np.zeros((0, 3))
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contain NaN or infinite values; remove or fix those rows")
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return values, offsets


def _nearest_gt(
    det_xy: np.ndarray, det_frame: np.ndarray, gt_xy: np.ndarray, gt_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance to, and global index of, each detection's nearest GT in its own frame.

    Returns distances (D,) float64 (inf when the frame has no GT) and GT indices (D,) int64
    (−1 when the frame has no GT).
    """
    n_gt = np.diff(gt_offsets)
    m_max = int(n_gt.max()) if len(n_gt) else 0
    dist = np.full(len(det_xy), np.inf)
    index = np.full(len(det_xy), -1, dtype=np.int64)
    if m_max == 0:
        return dist, index
    chunk = max(1, _CHUNK_ELEMENTS // m_max)
    slot = np.arange(m_max)
    for start in range(0, len(det_xy), chunk):
        xy, frame = det_xy[start : start + chunk], det_frame[start : start + chunk]
        first, count = gt_offsets[frame], n_gt[frame]
        valid = slot[None, :] < count[:, None]  # (d, m_max)
        gidx = np.where(valid, first[:, None] + slot[None, :], 0)
        d_row = xy[:, None, 0] - gt_xy[gidx, 0]
        d_col = xy[:, None, 1] - gt_xy[gidx, 1]
        d = np.where(valid, np.sqrt(d_row * d_row + d_col * d_col), np.inf)
        nearest = np.argmin(d, axis=1)  # first minimum, as np.argmin in the reference
        has_gt = count > 0
        dist[start : start + chunk] = np.where(has_gt, d[np.arange(len(d)), nearest], np.inf)
        index[start : start + chunk] = np.where(has_gt, first + nearest, -1)
    return dist, index


def match_detections(
    detections: Sequence,
    ground_truths: Sequence,
    thresholds: Sequence[float] = THRESHOLDS,
) -> Matching:
    """Greedy per-frame matching and pooled ranking (rules 1–2 of the module docstring).

    Parameters
    ----------
    detections : sequence over frames of array_like of shape (n_i, 3)
        (row, col, score) per detection, LR pixels.
    ground_truths : sequence over frames of array_like of shape (m_i, 3)
        (row, col, brightness) per target, LR pixels; brightness is ignored.
    thresholds : sequence of float
        Distance thresholds δ in LR pixels (inclusive).
    """
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"{len(detections)} detection frames but {len(ground_truths)} ground-truth frames; "
            "pass one entry per frame to both"
        )
    thresholds = tuple(float(t) for t in thresholds)
    det, det_offsets = _stack_frames(detections, "detections", "row, col, score")
    gt, gt_offsets = _stack_frames(ground_truths, "ground_truths", "row, col, brightness")
    det_frame = np.repeat(np.arange(len(detections)), np.diff(det_offsets))
    dist, gt_index = _nearest_gt(det[:, :2], det_frame, gt, gt_offsets)
    scores = det[:, 2]

    # Matching order: frame by frame, descending score, ties in listed order.
    by_score = np.argsort(-scores, kind="stable")
    visit = by_score[np.argsort(det_frame[by_score], kind="stable")]
    # Pooled ranking: descending score, ties by frame then listed order.
    rank = by_score

    tp = np.zeros((len(thresholds), len(det)), dtype=bool)
    for k, delta in enumerate(thresholds):
        # TP iff within δ and the first within-δ detection (in visiting order) of its GT.
        candidates = visit[dist[visit] <= delta]
        _, first = np.unique(gt_index[candidates], return_index=True)
        tp[k, candidates[first]] = True
    return Matching(scores[rank], tp[:, rank], len(gt), thresholds)


def precision_recall(tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision along a ranking.

    Parameters
    ----------
    tp : ndarray of shape (D,), bool
        True-positive flag of each ranked detection.
    n_gt : int
        Number of GT targets (recall denominator; 0 gives recall 0).

    Returns
    -------
    recall, precision : ndarrays of shape (D,), float64
    """
    tp_cum = np.cumsum(tp, dtype=np.float64)
    fp_cum = np.cumsum(~tp, dtype=np.float64)
    recall = tp_cum / max(n_gt, 1)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1.0)
    return recall, precision


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point area: Σ Δrecall × (precision envelope) over the points where recall changes.

    Recall is framed by 0 and 1, precision by 0 and 0; the envelope is the running maximum of
    precision taken from the right.
    """
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))


def cso_map(
    detections: Sequence,
    ground_truths: Sequence,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, float]:
    """CSO-mAP of detections against ground truth (see the module docstring for the rules).

    Parameters
    ----------
    detections : sequence over frames of array_like of shape (n_i, 3)
        (row, col, score) per detection, LR pixels.
    ground_truths : sequence over frames of array_like of shape (m_i, 3)
        (row, col, brightness) per target, LR pixels.
    thresholds : sequence of float
        Distance thresholds δ in LR pixels.

    Returns
    -------
    dict
        ``"mAP"`` and one ``"APxx"`` per threshold (``ap_key``), fractions in 0..1, unrounded.
    """
    return summarize(match_detections(detections, ground_truths, thresholds))


def summarize(matching: Matching) -> dict[str, float]:
    """``"mAP"`` (mean of the unrounded APs) and one ``"APxx"`` per threshold, in 0..1."""
    aps = {
        ap_key(delta): average_precision(*precision_recall(flags, matching.n_gt))
        for delta, flags in zip(matching.thresholds, matching.tp, strict=True)
    }
    return {"mAP": float(np.mean(list(aps.values()))), **aps}


def grid_detections(maps: np.ndarray, threshold: float = BRIGHTNESS_THRESHOLD):
    """Every HR cell that survives the brightness threshold is one detection
    (docs/reference.md §3.1).

    Values below ``threshold`` are set to 0 and every remaining non-zero cell is a detection,
    so a cell of exactly ``threshold`` counts and negative values never do.

    Parameters
    ----------
    maps : ndarray of shape (33, 33) or (N, 33, 33)
        HR output maps in grey levels.
    threshold : float
        Brightness threshold in grey levels.

    Returns
    -------
    ndarray of shape (n, 3), float64, for one map, or a list of N such arrays: (row, col, score)
    with the position of HR cell (i, j) at ((i − 1)/3, (j − 1)/3) LR pixels, score = the cell
    value; cells in row-major order.
    """
    m = np.asarray(maps)
    single = m.ndim == 2
    m = m[None] if single else m
    if m.ndim != 3 or m.shape[1:] != (HR, HR):
        raise ValueError(
            f"maps must have shape ({HR}, {HR}) or (N, {HR}, {HR}), got {np.shape(maps)}"
        )
    if not np.all(np.isfinite(m)):
        raise ValueError("maps contain NaN or infinite values; the model output is invalid")
    centres = hr_centres()
    frame, row, col = np.nonzero((m >= threshold) & (m != 0))
    dets = np.stack([centres[row], centres[col], m[frame, row, col].astype(np.float64)], axis=1)
    split = np.split(dets, np.searchsorted(frame, np.arange(1, len(m))))
    return split[0] if single else split
