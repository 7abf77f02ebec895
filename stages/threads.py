"""Torch thread count per stage.

``torch.set_num_threads`` is process-wide. When every stage has its own process, each torch
stage sets its own count once; in a single-process chain the torch stages (the unmixer) share
the process with the others, so each sets its count before every call (a no-op when it is
already right).

One thread is the default: the batches are small (tens of windows), so a second thread gains
little, and on a machine whose cores are busy (other stages, other jobs) a spinning OpenMP
thread costs far more than it gains (measured on 2 busy cores, 6 windows: the torch version
of the extractor took 16 ms with 1 thread, 110 ms with 2).
"""

from __future__ import annotations


def use_torch_threads(threads: int) -> None:
    """Make torch use ``threads`` intra-op threads from now on (skipped when already set)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
