"""Metrics that explain a loss, beside CSO-mAP (which :mod:`models.metric` keeps rule-exact).

All are pure functions of per-frame detections (n_i, 3) = (row, col, score) and truths
(m_i, 3) = (row, col, brightness), positions in LR pixels:

- :func:`count_accuracy`: per true target count K, the fraction of frames whose detections
  number exactly K.
- :func:`match_one_to_one` and :func:`localisation_summary`: the protocol of single-molecule
  localisation microscopy (the SMLM 2016 challenge): in each frame detections and truths are
  paired one to one within ``radius`` by an optimal assignment (least total distance among
  the pairings of the most pairs; Hungarian, :func:`scipy.optimize.linear_sum_assignment`);
  paired = TP, unpaired detections FP, unpaired truths FN; Jaccard = TP / (TP + FP + FN);
  lateral RMSE of the pairs; efficiency E = 100 − √((100 (1 − Jaccard))² + (α · RMSE)²),
  α = :data:`EFFICIENCY_ALPHA` per px (the challenge's 1 per nm with 100-nm pixels). Unlike
  CSO-mAP, this ignores scores and ranks nothing.
- :func:`crlb_efficiency`: RMSE of the pairs over the root of their Cramér–Rao variance
  (:mod:`models.ceiling`): 1 for an efficient unbiased estimator.
- :func:`breakdown`: those target-level figures (recall within the radius, RMSE, and the
  bound's mean hit probability) per bin of a per-target quantity: the frame's K, the
  distance to the nearest other target, the brightness.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

#: Default pairing radius of the SMLM protocol (LR pixels): CSO-mAP's widest threshold.
RADIUS = 0.25
#: Efficiency weight of the RMSE, per px.
EFFICIENCY_ALPHA = 100.0
#: Bin edges of :func:`breakdown`: nearest-neighbour distance (px; a lone target's is inf)
#: and brightness (grey levels).
SEPARATION_EDGES = (0.0, 0.4, 0.6, 0.8, 1.2, np.inf)
BRIGHTNESS_EDGES = (0.0, 120.0, 160.0, 200.0, 230.0, np.inf)


def count_accuracy(points: Sequence, truths: Sequence) -> dict:
    """Per true target count K (key ``str(K)``): the frames with K targets and the fraction
    of them with exactly K detections."""
    true_k = np.array([len(t) for t in truths])
    found = np.array([len(p) for p in points])
    return {str(k): {"windows": int((true_k == k).sum()),
                     "right": float((found[true_k == k] == k).mean())}
            for k in np.unique(true_k)}


def _xy(frame) -> np.ndarray:
    a = np.asarray(frame, dtype=np.float64).reshape(-1, 3) if len(frame) else np.zeros((0, 3))
    return a[:, :2]


def match_one_to_one(detections: Sequence, truths: Sequence,
                     radius: float = RADIUS) -> list[np.ndarray]:
    """Per frame, the pairs (P, 2) = (detection index, truth index) of an optimal one-to-one
    matching within ``radius`` (inclusive): the most pairs, and among those the least total
    distance."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} frames of detections but {len(truths)} of truths")
    if not radius > 0:
        raise ValueError(f"radius must be > 0 px, got {radius}")
    pairs = []
    for det, gt in zip(detections, truths, strict=True):
        d, g = _xy(det), _xy(gt)
        if not len(d) or not len(g):
            pairs.append(np.zeros((0, 2), dtype=np.int64))
            continue
        dist = np.hypot(d[:, None, 0] - g[None, :, 0], d[:, None, 1] - g[None, :, 1])
        # pairs beyond the radius cost more than any set of allowed pairs can save
        big = 1.0 + dist[dist <= radius].sum() if np.any(dist <= radius) else 1.0
        rows, cols = linear_sum_assignment(np.where(dist <= radius, dist, big))
        keep = dist[rows, cols] <= radius
        pairs.append(np.column_stack([rows[keep], cols[keep]]).astype(np.int64))
    return pairs


def pair_errors(detections: Sequence, truths: Sequence,
                pairs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per frame, the position errors (P, 2) = detection − truth of the pairs."""
    return [(_xy(det)[p[:, 0]] - _xy(gt)[p[:, 1]]) if len(p) else np.zeros((0, 2))
            for det, gt, p in zip(detections, truths, pairs, strict=True)]


def localisation_summary(detections: Sequence, truths: Sequence,
                         radius: float = RADIUS) -> dict:
    """SMLM figures over all frames: tp, fp, fn, jaccard, recall, precision, rmse (px,
    None without pairs), efficiency (None without pairs) and the radius."""
    pairs = match_one_to_one(detections, truths, radius)
    tp = sum(len(p) for p in pairs)
    n_det = sum(len(d) for d in detections)
    n_gt = sum(len(g) for g in truths)
    fp, fn = n_det - tp, n_gt - tp
    errors = np.concatenate(pair_errors(detections, truths, pairs))
    rmse = float(np.sqrt((errors**2).sum(axis=1).mean())) if tp else None
    jaccard = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    efficiency = (100.0 - float(np.hypot(100.0 * (1.0 - jaccard), EFFICIENCY_ALPHA * rmse))
                  if rmse is not None else None)
    return {"radius": radius, "tp": tp, "fp": fp, "fn": fn, "jaccard": jaccard,
            "recall": tp / n_gt if n_gt else None, "precision": tp / n_det if n_det else None,
            "rmse": rmse, "efficiency": efficiency}


def crlb_efficiency(detections: Sequence, truths: Sequence, bound_variance: Sequence,
                    radius: float = RADIUS) -> float | None:
    """√(Σ‖e‖² / Σ tr Σ) over the one-to-one pairs whose truth has a finite bound.

    ``bound_variance``: per frame, the trace (m_i,) of each truth's Cramér–Rao position
    covariance (px²). None without such pairs.
    """
    pairs = match_one_to_one(detections, truths, radius)
    errors = pair_errors(detections, truths, pairs)
    num = den = 0.0
    for p, e, var in zip(pairs, errors, bound_variance, strict=True):
        if not len(p):
            continue
        v = np.asarray(var, dtype=np.float64)[p[:, 1]]
        ok = np.isfinite(v) & (v < 1.0)  # a bound of a pixel or more says "not localisable"
        num += float((e[ok] ** 2).sum())
        den += float(v[ok].sum())
    return float(np.sqrt(num / den)) if den > 0 else None


def nearest_other(truths: Sequence) -> list[np.ndarray]:
    """Per frame, each truth's distance (m_i,) to the nearest other truth (inf when alone)."""
    out = []
    for gt in truths:
        g = _xy(gt)
        dist = np.hypot(g[:, None, 0] - g[None, :, 0], g[:, None, 1] - g[None, :, 1])
        np.fill_diagonal(dist, np.inf)
        out.append(dist.min(axis=1) if len(g) else np.zeros(0))
    return out


def breakdown(detections: Sequence, truths: Sequence, values: Sequence, edges: Sequence,
              hit_bound: Sequence | None = None, radius: float = RADIUS) -> list[dict]:
    """Target-level figures per bin [edges[i], edges[i+1]) of a per-truth value.

    Parameters
    ----------
    values : sequence of (m_i,) arrays
        The binned quantity of each truth (e.g. :func:`nearest_other`, the brightness).
    hit_bound : sequence of (m_i,) arrays, optional
        Each truth's Cramér–Rao hit probability at ``radius`` (:mod:`models.ceiling`).

    Returns
    -------
    list of dict, one per bin (the last one takes inf, e.g. a lone target's distance):
    ``low``, ``high``, ``targets``, ``recall`` (paired within the
    radius), ``rmse`` of the pairs (px) and ``bound_recall`` (mean hit probability), None
    where the bin is empty.
    """
    pairs = match_one_to_one(detections, truths, radius)
    errors = pair_errors(detections, truths, pairs)
    vals = np.concatenate([np.asarray(v, dtype=np.float64) for v in values]) \
        if len(values) else np.zeros(0)
    found = np.zeros(len(vals), dtype=bool)
    sq = np.full(len(vals), np.nan)
    start = 0
    for gt, p, e in zip(truths, pairs, errors, strict=True):
        found[start + p[:, 1]] = True
        sq[start + p[:, 1]] = (e**2).sum(axis=1)
        start += len(gt)
    bound = (np.concatenate([np.asarray(b, dtype=np.float64) for b in hit_bound])
             if hit_bound is not None else None)
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (vals >= low) & ((vals < high) | (high == np.inf))
        n = int(inside.sum())
        hits = inside & found
        rows.append({
            "low": float(low), "high": float(high), "targets": n,
            "recall": float(found[inside].mean()) if n else None,
            "rmse": float(np.sqrt(sq[hits].mean())) if hits.any() else None,
            "bound_recall": float(bound[inside].mean()) if n and bound is not None else None,
        })
    return rows
