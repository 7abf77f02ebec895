"""Batched fixed-point iterations in which every sample stops on its own criterion."""

from __future__ import annotations

import torch


def iterate_per_sample(x: torch.Tensor, step, max_iter: int):
    """Iterate ``x ← step(x, rows)`` and freeze each sample at its own stopping iteration.

    Every sample gets exactly the result it would get if it were run alone.

    Parameters
    ----------
    x : Tensor of shape (B, ...)
        Initial iterates.
    step : callable
        ``step(x, rows) -> (x_new, done)``: ``x`` (n, ...) holds the iterates of the n samples
        still running and ``rows`` (n,) int64 their indices in the batch (to select per-sample
        data); ``done`` (n,) bool marks the samples that stop now, keeping ``x_new``.
    max_iter : int
        Iteration cap per sample.

    Returns
    -------
    x : Tensor of shape (B, ...)
        Final iterate of every sample.
    iterations : Tensor of shape (B,), int64
        Iterations run per sample (``max_iter`` for the samples that never stopped).
    """
    out = torch.empty_like(x)
    iterations = torch.full((len(x),), max_iter, dtype=torch.int64, device=x.device)
    active = torch.arange(len(x), device=x.device)
    for it in range(1, max_iter + 1):
        if len(active) == 0:
            break
        x, done = step(x, active)
        if done.any():
            out[active[done]] = x[done]
            iterations[active[done]] = it
            active, x = active[~done], x[~done]
    out[active] = x
    return out, iterations
