"""SeqCSIST-compatible physics and data: sampling matrix, renderer, trajectories, file formats.

Conventions (facts §1.3): arrays are indexed (row, col); positions are (row, col) floats in
LR-pixel units with integer = pixel centre. SeqCSIST's ``xc`` is the row, ``yc`` the column.
HR cell i (ratio c) has its centre at ``(i - (c - 1) // 2) / c`` LR pixels.
"""

from sim.seqcsist_io import load_dataset

__all__ = ["load_dataset"]
