"""SeqCSIST-compatible physics and data: sampling matrix, renderer, trajectories, file formats.

Conventions (docs/reference.md §1.3): arrays are indexed (row, col); positions are (row, col)
floats in LR-pixel units with integer = pixel centre. SeqCSIST's ``xc`` is the row, ``yc`` the
column. HR cell i (ratio c) has its centre at ``(i - (c - 1) // 2) / c`` LR pixels.

``sim`` is the bottom layer: it imports neither :mod:`models`, :mod:`stages` nor
:mod:`pipeline`. ``sim.load_dataset`` is imported on first use, so ``import sim.geometry``
stays free of NumPy and SciPy.
"""

__all__ = ["load_dataset"]


def __getattr__(name: str):
    if name == "load_dataset":
        from sim.seqcsist_io import load_dataset

        return load_dataset
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
