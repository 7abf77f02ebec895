"""Drawing one annotated frame: the whole frame with every mark, and zoomed window tiles.

Picture layout (BGR, uint8)::

    +------------------------------------------------+
    | header: seq, counts, colour legend             |
    +-------------------------------+----------------+
    | the frame × scale: blob boxes,| tile | tile    |  one tile per window (up to
    | window crops, point crosses,  |------+-------  |  ``tiles``): the centre of its
    | track ids                     | tile | tile    |  crop (``tile_px``² pixels) ×
    |                               |      |         |  zoom, with truth, points and
    +-------------------------------+----------------+  tracks at sub-pixel positions

At the scale of the whole frame the sub-targets of a group (fractions of a pixel apart) fall
on one spot; the tiles show them ``zoom`` times larger, truth beside estimate. The picture
has the same size for every frame of a stream (empty tile slots stay dark), so frames can go
into one video.

Positions are frame pixels with integer = pixel centre; a pixel p covers canvas pixels
[p·s, (p+1)·s) at scale s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from sim.geometry import PATCH
from stages.messages import Blob, Point, Track, TruthPoint, WindowInfo
from stages.patches import crop

BLOB_COLOUR = (0, 200, 255)  # BGR: orange boxes around blobs
WINDOW_COLOUR = (255, 160, 0)  # blue: the 11×11 crop of each window
POINT_COLOUR = (0, 0, 255)  # red +: unmixed sub-targets (points)
TRACK_COLOUR = (0, 255, 255)  # yellow ×, ids: confirmed tracks
TRUTH_COLOUR = (0, 220, 0)  # green ○: true sub-targets (simulator)
TEXT_COLOUR = (230, 230, 230)
HEADER = 22  # header height (px)
CAPTION = 16  # caption height above each tile (px)
GAP = 4  # space between tiles (px)
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel positions
_FONT = cv2.FONT_HERSHEY_PLAIN


def stretch_to_uint8(
    image: np.ndarray, low: float = 1.0, high: float = 99.99, gamma: float = 0.5
) -> np.ndarray:
    """Contrast stretch to uint8 (H, W): the ``low``..``high`` percentiles map to 0..1, then
    ``x ** gamma`` (γ < 1 lifts the faint background and clutter while bright targets keep
    their shape), then 0..255."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [low, high])
    unit = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return np.rint(255.0 * unit**gamma).astype(np.uint8)


def to_canvas(
    row: float, col: float, scale: float, offset: tuple[int, int] = (0, 0)
) -> tuple[int, int]:
    """(x, y) fixed-point canvas coordinates (``_SHIFT`` fractional bits) of a position.

    ``offset`` is the (x, y) canvas pixel where position (−0.5, −0.5) lies.
    """
    factor = 1 << _SHIFT
    x = (offset[0] + (col + 0.5) * scale - 0.5) * factor
    y = (offset[1] + (row + 0.5) * scale - 0.5) * factor
    return round(x), round(y)


def label_groups(tracks: Sequence[Track], radius: float = 2.0) -> dict[tuple, list[int]]:
    """Track ids gathered under one label per cluster, so that the ids of the sub-targets of
    one CSO group (a fraction of a pixel apart) do not print over each other.

    Returns
    -------
    dict mapping the (row, col) of the cluster's first track (lowest id) to its sorted ids;
    a track joins the first cluster whose anchor is within ``radius`` px.
    """
    groups: dict[tuple, list[int]] = {}
    for t in sorted(tracks, key=lambda t: t.track_id):
        anchor = next(
            (a for a in groups if np.hypot(a[0] - t.row, a[1] - t.col) <= radius), None
        )
        groups.setdefault(anchor or (t.row, t.col), []).append(t.track_id)
    return groups


def put_label(canvas: np.ndarray, text: str, at: tuple[int, int], colour: tuple) -> None:
    """Text whose lower-left corner is ``at`` (x, y), moved inside the canvas if it would
    stick out (to the left of ``at`` at the right edge, below it at the top edge)."""
    (width, height), _ = cv2.getTextSize(text, _FONT, 0.8, 1)
    x, y = at
    if x + width > canvas.shape[1]:
        x = max(0, canvas.shape[1] - width - 1)
    y = min(max(y, height + 1), canvas.shape[0] - 1)
    cv2.putText(canvas, text, (x, y), _FONT, 0.8, colour, 1, cv2.LINE_AA)


def draw_cross(canvas: np.ndarray, xy: tuple[int, int], arm: int, colour: tuple,
               diagonal: bool = False) -> None:
    """A + (or × when ``diagonal``) centred on fixed-point ``xy`` with arms of ``arm`` px."""
    x, y = xy
    d = arm << _SHIFT
    ends = [((x - d, y - d), (x + d, y + d)), ((x - d, y + d), (x + d, y - d))] if diagonal \
        else [((x - d, y), (x + d, y)), ((x, y - d), (x, y + d))]
    for a, b in ends:
        cv2.line(canvas, a, b, colour, 1, cv2.LINE_AA, _SHIFT)


def draw_frame(
    image: np.ndarray,
    blobs: Sequence[Blob],
    windows: Sequence[WindowInfo],
    points: Sequence[Point],
    tracks: Sequence[Track],
    scale: int,
    percentiles: tuple[float, float],
    gamma: float,
) -> np.ndarray:
    """The whole frame × ``scale`` with every mark: (H·scale, W·scale, 3) uint8 BGR."""
    grey = stretch_to_uint8(image, *percentiles, gamma)
    big = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    canvas = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    for b in blobs:
        half = (np.sqrt(b.area) / 2 + 1.0) * scale
        x, y = to_canvas(b.row, b.col, scale)
        d = round(half * (1 << _SHIFT))
        cv2.rectangle(canvas, (x - d, y - d), (x + d, y + d), BLOB_COLOUR, 1, cv2.LINE_8, _SHIFT)
    for w in windows:
        top = (w.origin_col * scale, w.origin_row * scale)
        bottom = ((w.origin_col + PATCH) * scale - 1, (w.origin_row + PATCH) * scale - 1)
        cv2.rectangle(canvas, top, bottom, WINDOW_COLOUR, 1)
    for p in points:
        draw_cross(canvas, to_canvas(p.row, p.col, scale), max(scale, 2), POINT_COLOUR)
    for (row, col), ids in label_groups(tracks).items():
        x, y = to_canvas(row, col, scale)
        at = (x >> _SHIFT) + 2 * scale, (y >> _SHIFT) - 2 * scale
        put_label(canvas, ",".join(map(str, ids)), at, TRACK_COLOUR)
    return canvas


def draw_tile(
    image: np.ndarray,
    window: WindowInfo,
    truth: Sequence[TruthPoint],
    points: Sequence[Point],
    tracks: Sequence[Track],
    size: int,
    zoom: int,
) -> np.ndarray:
    """The central ``size``² pixels of a window's crop × ``zoom``, with a caption:
    (CAPTION + size·zoom, size·zoom, 3) uint8 BGR.

    Truth (○), points (+) and tracks (×) inside the tile are drawn at their sub-pixel
    positions; the caption names the window's blob track and the tracks inside the tile.
    """
    margin = (PATCH - size) // 2
    origin = (window.origin_row + margin, window.origin_col + margin)
    patch = crop(np.asarray(image, np.float32), origin, size, float(np.median(image)))
    grey = stretch_to_uint8(patch, 0.0, 100.0, 1.0)
    big = cv2.resize(grey, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    tile = np.zeros((CAPTION + size * zoom, size * zoom, 3), np.uint8)
    tile[CAPTION:] = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)

    def inside(row: float, col: float) -> bool:
        r, c = row - origin[0], col - origin[1]
        return -0.5 <= r < size - 0.5 and -0.5 <= c < size - 0.5

    def at(row: float, col: float) -> tuple[int, int]:
        return to_canvas(row - origin[0], col - origin[1], zoom, (0, CAPTION))

    arm = max(zoom // 8, 2)
    for q in truth:
        if inside(q.row, q.col):
            cv2.circle(tile, at(q.row, q.col), arm << _SHIFT, TRUTH_COLOUR, 1, cv2.LINE_AA,
                       _SHIFT)
    for p in points:
        if inside(p.row, p.col):
            draw_cross(tile, at(p.row, p.col), arm, POINT_COLOUR)
    ids = []
    for t in tracks:
        if inside(t.row, t.col):
            draw_cross(tile, at(t.row, t.col), arm, TRACK_COLOUR, diagonal=True)
            ids.append(t.track_id)
    caption = f"blob {window.blob_id}" + (f" | tracks {','.join(map(str, sorted(ids)))}"
                                            if ids else "")
    put_label(tile, caption, (2, CAPTION - 4), TEXT_COLOUR)
    return tile


def draw_overlay(
    image: np.ndarray,
    blobs: Sequence[Blob] = (),
    windows: Sequence[WindowInfo] = (),
    points: Sequence[Point] = (),
    tracks: Sequence[Track] = (),
    truth: Sequence[TruthPoint] | None = None,
    seq: int | None = None,
    scale: int = 3,
    percentiles: tuple[float, float] = (1.0, 99.99),
    gamma: float = 0.5,
    tiles: int = 6,
    tile_px: int = 5,
    zoom: int = 44,
) -> np.ndarray:
    """An annotated picture of one frame (see the module docstring for the layout).

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Raw frame.
    blobs, windows, points, tracks
        What to draw, all in frame pixels: blob boxes (orange), window crops (blue), point
        crosses (red), track ids (yellow).
    truth : sequence of TruthPoint or None
        True sub-targets, drawn in the tiles (green circles); None = no truth.
    seq : int or None
        Frame seq shown in the header.
    scale : int
        Upscaling factor of the whole frame.
    percentiles : tuple of float
        Contrast stretch percentiles of the whole frame.
    gamma : float
        Gamma of that stretch.
    tiles : int
        Tile slots (windows shown zoomed, lowest blob-track ids first); 0 = no tiles.
    tile_px : int
        Pixels per side of the centre of a window's crop shown in its tile (1..11).
    zoom : int
        Upscaling factor of the tiles.

    Returns
    -------
    ndarray of shape (HEADER + max(H·scale, rows·(CAPTION + tile_px·zoom + GAP)),
    W·scale + cols·(tile_px·zoom + GAP), 3), uint8 BGR, where the tile slots are arranged in
    ``rows`` = as many as fit beside the frame (at least 1) and ``cols`` = ceil(tiles / rows).
    """
    if not 1 <= tile_px <= PATCH:
        raise ValueError(f"tile_px must be in 1..{PATCH}, got {tile_px}")
    frame = draw_frame(image, blobs, windows, points, tracks, scale, percentiles, gamma)
    tile_h, tile_w = CAPTION + tile_px * zoom + GAP, tile_px * zoom + GAP
    rows = max(1, min(tiles, frame.shape[0] // tile_h)) if tiles else 0
    cols = math.ceil(tiles / rows) if tiles else 0
    height = HEADER + max(frame.shape[0], rows * tile_h)
    canvas = np.zeros((height, frame.shape[1] + cols * tile_w, 3), np.uint8)
    canvas[HEADER:HEADER + frame.shape[0], : frame.shape[1]] = frame
    for i, window in enumerate(windows[:tiles]):
        tile = draw_tile(image, window, truth or (), points, tracks, tile_px, zoom)
        y = HEADER + (i % rows) * tile_h
        x = frame.shape[1] + GAP + (i // rows) * tile_w
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    draw_header(canvas, seq, len(windows), len(points), len(tracks), truth is not None)
    return canvas


def draw_header(canvas: np.ndarray, seq: int | None, windows: int, points: int, tracks: int,
                truth: bool) -> None:
    """Counts and the colour legend along the top ``HEADER`` pixels."""
    text = f"seq {seq}  " if seq is not None else ""
    text += f"windows {windows}  points {points}  tracks {tracks}"
    x = 4
    legend = [(text, TEXT_COLOUR), ("+ point", POINT_COLOUR), ("x track", TRACK_COLOUR)]
    if truth:
        legend.append(("o truth", TRUTH_COLOUR))
    legend += [("blob", BLOB_COLOUR), ("window", WINDOW_COLOUR)]
    for label, colour in legend:
        cv2.putText(canvas, label, (x, HEADER - 7), _FONT, 0.9, colour, 1, cv2.LINE_AA)
        x += cv2.getTextSize(label, _FONT, 0.9, 1)[0][0] + 14
