"""A PNG contact sheet of one trajectory, for a person to look at.

The frames are shown with their raw grey levels (no contrast stretch), upscaled by
nearest neighbour, in a grid of ``columns`` tiles, left to right then top to bottom, each
labelled with its frame index. Every ground-truth target is a small ring in its own colour
(the same target keeps its colour in every frame), centred on its continuous position:
LR position (row, col), integer = pixel centre, is drawn at sheet pixel
((row + ½)·scale − ½, (col + ½)·scale − ½) from the tile's top-left corner.

Layout (pixels): a title bar of :data:`TITLE_HEIGHT`, then rows of tiles of side
``patch·scale`` separated and surrounded by :data:`GAP`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sim.dataset import DatasetError, SeqDataset

GAP = 8
TITLE_HEIGHT = 28
SHIFT = 4  # cv2 fixed-point fraction bits for sub-pixel drawing
# BGR, one per target slot (2–8 targets).
COLOURS = (
    (0, 0, 255), (0, 200, 0), (255, 96, 0), (0, 220, 255),
    (255, 0, 255), (255, 255, 0), (0, 128, 255), (160, 96, 255),
)


def sheet_size(frames: int, patch: int, scale: int, columns: int) -> tuple[int, int]:
    """(height, width) of a sheet in pixels."""
    rows = -(-frames // columns)
    tile = patch * scale
    return TITLE_HEIGHT + rows * tile + (rows + 1) * GAP, columns * tile + (columns + 1) * GAP


def _fixed(value: float) -> int:
    return int(round(value * (1 << SHIFT)))


def trajectory_sheet(
    images: np.ndarray,
    targets: np.ndarray,
    scale: int = 16,
    columns: int = 5,
    title: str = "",
) -> np.ndarray:
    """Draw a sheet.

    Parameters
    ----------
    images : ndarray of shape (T, H, W), uint8
        Frames of one trajectory (raw grey levels).
    targets : ndarray of shape (T, K, 3)
        (row, col, brightness) per target in LR pixels; NaN rows are padding.
    scale : int
        Nearest-neighbour upscaling factor.
    columns : int
        Tiles per sheet row.
    title : str
        Text of the title bar.

    Returns
    -------
    ndarray of shape (sheet_height, sheet_width, 3), uint8 BGR (see :func:`sheet_size`).
    """
    frames, height, width = images.shape
    if height != width:
        raise ValueError(f"frames must be square, got {height}×{width}")
    tile = height * scale
    sheet = np.full((*sheet_size(frames, height, scale, columns), 3), 32, dtype=np.uint8)
    cv2.putText(sheet, title, (GAP, TITLE_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    radius = max(2.0, scale / 6)
    for t in range(frames):
        top = TITLE_HEIGHT + GAP + (t // columns) * (tile + GAP)
        left = GAP + (t % columns) * (tile + GAP)
        big = np.repeat(np.repeat(images[t], scale, axis=0), scale, axis=1)
        sheet[top : top + tile, left : left + tile] = big[..., None]
        markers = [
            ((_fixed(left + (col + 0.5) * scale - 0.5), _fixed(top + (row + 0.5) * scale - 0.5)),
             COLOURS[k % len(COLOURS)])
            for k, (row, col, _) in enumerate(targets[t])
            if np.isfinite(row) and np.isfinite(col)
        ]
        for centre, colour in markers:  # rings first, so no ring hides another target's dot
            cv2.circle(sheet, centre, _fixed(radius), colour, 1, cv2.LINE_AA, SHIFT)
        for centre, colour in markers:
            cv2.circle(sheet, centre, _fixed(1.0), colour, -1, cv2.LINE_8, SHIFT)
        cv2.putText(sheet, f"t={t}", (left + 3, top + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 255, 255), 1, cv2.LINE_AA)
    return sheet


def write_sheet(
    ds: SeqDataset, trajectory: int, out: str | Path, scale: int = 16, label: str = ""
) -> Path:
    """Write the sheet of trajectory ``trajectory`` of ``ds`` as a PNG; returns the path."""
    if not 0 <= trajectory < ds.n_trajectories:
        raise DatasetError(
            f"trajectory {trajectory} out of range; this split has {ds.n_trajectories} "
            f"(0 … {ds.n_trajectories - 1})"
        )
    images = ds.trajectory_images()[trajectory]
    targets = ds.trajectory_targets()[trajectory]
    count = int(np.all(np.isfinite(targets[0]), axis=-1).sum())
    title = f"{label} trajectory {trajectory}: {count} targets, {len(images)} frames".strip()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), trajectory_sheet(images, targets, scale, title=title)):
        raise OSError(f"{out}: cv2.imwrite failed; use a .png name in a writable folder")
    return out
