"""Gated one-to-one association, shared by the cropper (blobs ↔ blob tracks) and the tracker
(points ↔ sub-target tracks)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def gated_assignment(cost: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one pairing of rows and columns, pairs with cost > gate forbidden.

    Among the pairings with the most admissible pairs, the one of lowest total cost is chosen
    (Hungarian algorithm).

    Parameters
    ----------
    cost : ndarray of shape (R, C)
        Pairing costs (non-negative; inf allowed).
    gate : float
        Largest admissible cost (inclusive).

    Returns
    -------
    pairs : ndarray of shape (K, 2), int64
        (row, col) index pairs, sorted by row.
    free_rows : ndarray of shape (R − K,), int64
    free_cols : ndarray of shape (C − K,), int64

    Examples
    --------
    >>> pairs, rows, cols = gated_assignment(np.array([[0.1, 5.0], [0.2, 0.3]]), gate=1.0)
    >>> pairs.tolist(), rows.tolist(), cols.tolist()
    ([[0, 0], [1, 1]], [], [])
    """
    cost = np.asarray(cost, dtype=np.float64)
    n_rows, n_cols = cost.shape
    allowed = cost <= gate
    pairs = np.zeros((0, 2), dtype=np.int64)
    if allowed.any():
        # Forbidden pairs get a cost larger than any sum of allowed ones, so the solver
        # only uses them when nothing else is left; they are removed afterwards.
        big = 1.0 + max(float(gate), 0.0) * (min(n_rows, n_cols) + 1)
        rows, cols = linear_sum_assignment(np.where(allowed, cost, big))
        ok = allowed[rows, cols]
        pairs = np.column_stack([rows[ok], cols[ok]]).astype(np.int64)
    free_rows = np.setdiff1d(np.arange(n_rows), pairs[:, 0])
    free_cols = np.setdiff1d(np.arange(n_cols), pairs[:, 1])
    return pairs, free_rows, free_cols
