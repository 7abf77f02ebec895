"""Background patches cut from a folder of real images (the hybrid set of paper Table IV).

Choice (the paper does not say how its backgrounds were made): every image in the folder is
read as greyscale at its own bit depth; a patch is an 11×11 window at a uniformly random
position of a uniformly chosen image; its values are scaled so that the image type's full
scale (255 for 8-bit, 65535 for 16-bit, 1.0 for float images) becomes ``amplitude`` grey
levels. The default amplitude of 64 keeps the brightest background well below a target's
peak pixel (about 100–115 grey levels on a pixel centre), so targets stay visible and the
sum still mostly fits in 8 bits. The patch is added to the rendered frame before rounding;
one patch serves all frames of a trajectory (see :func:`sim.dataset.simulate`).

Without real IR frames, ``builtin`` (:data:`BUILTIN`) takes the patches from the IR-like
scenes of :mod:`sim.clutter` instead (photographs made IR-like, synthetic clutter, sensor
defects).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sim.geometry import PATCH

#: ``--backgrounds`` value that selects the built-in scenes of :mod:`sim.clutter`.
BUILTIN = "builtin"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_AMPLITUDE = 64.0


def _full_scale(image: np.ndarray, path: Path) -> float:
    if np.issubdtype(image.dtype, np.unsignedinteger):
        return float(np.iinfo(image.dtype).max)
    if np.issubdtype(image.dtype, np.floating):
        return 1.0
    raise ValueError(
        f"{path}: unsupported pixel type {image.dtype}; use 8- or 16-bit unsigned or float images"
    )


def read_background_images(folder: str | Path, patch: int = PATCH) -> list[np.ndarray]:
    """Greyscale images of a folder scaled to 0…1 (full scale of their type = 1).

    Parameters
    ----------
    folder : path
        Folder with image files (suffixes in :data:`IMAGE_SUFFIXES`, read in name order).
    patch : int
        Patch side; images smaller than patch × patch are skipped.

    Returns
    -------
    list of ndarray of shape (H_i, W_i), float64

    Raises
    ------
    ValueError
        Missing folder, an unreadable image, or no image at least ``patch`` pixels on a side.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: background folder not found; pass a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)  # greyscale, own bit depth
        if image is None:
            raise ValueError(f"{path}: cannot read this image; remove it or convert it to PNG")
        scaled = np.clip(image.astype(np.float64) / _full_scale(image, path), 0.0, 1.0)
        if min(scaled.shape) >= patch:
            images.append(scaled)
    if not images:
        raise ValueError(
            f"{folder}: no image of at least {patch}×{patch} pixels with a suffix in "
            f"{IMAGE_SUFFIXES}; add background images"
        )
    return images


def random_crops(
    images: list[np.ndarray],
    count: int,
    rng: np.random.Generator,
    patch: int = PATCH,
    amplitude: float = DEFAULT_AMPLITUDE,
) -> np.ndarray:
    """``count`` random patch × patch windows, scaled to grey levels.

    Parameters
    ----------
    images : list of ndarray of shape (H_i, W_i)
        Sources in 0…1 (see :func:`read_background_images`); each at least patch × patch.
    count : int
        Number of crops.
    rng : numpy.random.Generator
        Picks the image (uniformly) and the window position (uniformly).
    amplitude : float
        Grey levels that a source value of 1 maps to.

    Returns
    -------
    ndarray of shape (count, patch, patch), float64 grey levels in [0, amplitude].
    """
    if amplitude < 0:
        raise ValueError(f"amplitude must be >= 0 grey levels, got {amplitude}")
    out = np.empty((count, patch, patch))
    for i, pick in enumerate(rng.integers(len(images), size=count)):
        image = images[pick]
        r = rng.integers(image.shape[0] - patch + 1)
        c = rng.integers(image.shape[1] - patch + 1)
        out[i] = image[r : r + patch, c : c + patch]
    return out * amplitude


def background_images(source: str | Path, rng: np.random.Generator,
                      patch: int = PATCH) -> list[np.ndarray]:
    """The images patches are cut from, in 0…1: the built-in IR-like scenes of
    :mod:`sim.clutter` (drawn with ``rng``) when ``source`` is :data:`BUILTIN`, else the images
    of the folder ``source`` (:func:`read_background_images`)."""
    if str(source) == BUILTIN:
        from sim.clutter import builtin_scenes

        return builtin_scenes(rng)
    return read_background_images(source, patch)


def load_backgrounds(
    folder: str | Path,
    count: int,
    rng: np.random.Generator,
    patch: int = PATCH,
    amplitude: float = DEFAULT_AMPLITUDE,
) -> np.ndarray:
    """Cut ``count`` random patches from :func:`background_images` of ``folder`` (a folder
    or :data:`BUILTIN`): (count, patch, patch) grey levels."""
    return random_crops(background_images(folder, rng, patch), count, rng, patch, amplitude)
