"""The official SeqCSIST folder layout (docs/reference.md §1.1–1.2), and one reader for both
formats.

One split folder holds, for frames k = 0 … N − 1 (k restarts at 0 in every split)::

    SPLIT/image/image_{k}.png      8-bit single-channel frame, raw grey levels
    SPLIT/annotation/COS{k}.xml    its targets: xc = ROW, yc = COL, brightness (grey levels)

Trajectory j is frames traj_len·j … traj_len·j + traj_len − 1. A dataset root holds one
folder per split (train/, val/, test/) or one compact file per split (train.npz, …; see
:mod:`sim.dataset`).

The XML text is produced from a string template that reproduces byte for byte what the
reference writer gets from ``minidom.toprettyxml()`` (tab indent, ``<?xml version="1.0" ?>``
header, trailing newline). Floats are written with Python's ``str(float)`` (shortest repr),
so reading them back with ``float()`` gives the exact same numbers.
"""

from __future__ import annotations

import multiprocessing
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sim.dataset import DatasetError, SeqDataset, load_npz

IMAGE_DIR = "image"
ANNOTATION_DIR = "annotation"
CHUNK_FRAMES = 1000  # frames per writer task

_XML_HEAD = (
    '<?xml version="1.0" ?>\n'
    "<annotation>\n"
    "\t<filename>COS{k}</filename>\n"
    "\t<size>\n"
    "\t\t<width>{width}</width>\n"
    "\t\t<height>{height}</height>\n"
    "\t\t<depth>1</depth>\n"
    "\t</size>\n"
    "\t<sigma>{sigma}</sigma>\n"
)
_XML_OBJECT = (
    "\t<object>\n"
    "\t\t<name>Target</name>\n"
    "\t\t<coordinate>\n"
    "\t\t\t<xc>{xc}</xc>\n"
    "\t\t\t<yc>{yc}</yc>\n"
    "\t\t\t<brightness>{brightness}</brightness>\n"
    "\t\t</coordinate>\n"
    "\t</object>\n"
)
_XML_TAIL = "</annotation>\n"
_FIRST_INT = re.compile(r"\d+")


def image_name(k: int) -> str:
    """File name of frame k inside ``image/``."""
    return f"image_{k}.png"


def annotation_name(k: int | str) -> str:
    """File name of the annotation of frame k inside ``annotation/`` (the reference's ``COS``)."""
    return f"COS{k}.xml"


def annotation_xml(k: int, targets: np.ndarray, sigma: float, width: int, height: int) -> str:
    """The annotation of frame k as text, laid out exactly like ``minidom.toprettyxml()``.

    Parameters
    ----------
    k : int
        Frame number within its split.
    targets : ndarray of shape (K, 3)
        (row, col, brightness) per target; rows containing NaN are padding and are skipped.
    sigma : float
        PSF standard deviation in pixels.
    width, height : int
        Image size in pixels (columns, rows).
    """
    parts = [_XML_HEAD.format(k=k, width=width, height=height, sigma=float(sigma))]
    for row, col, brightness in np.asarray(targets, dtype=np.float64):
        if np.isfinite(row) and np.isfinite(col) and np.isfinite(brightness):
            parts.append(
                _XML_OBJECT.format(xc=float(row), yc=float(col), brightness=float(brightness))
            )
    parts.append(_XML_TAIL)
    return "".join(parts)


def _write_frames(job: tuple[str, int, np.ndarray, np.ndarray, float]) -> int:
    """Write frames start … start + len(images) − 1 of one split; returns the frame count."""
    folder, start, images, targets, sigma = job
    image_dir = Path(folder) / IMAGE_DIR
    ann_dir = Path(folder) / ANNOTATION_DIR
    height, width = images.shape[1:]
    for i, (image, frame_targets) in enumerate(zip(images, targets, strict=True)):
        k = start + i
        path = image_dir / image_name(k)
        if not cv2.imwrite(str(path), image):
            raise OSError(f"{path}: cv2.imwrite failed; check that the folder is writable")
        (ann_dir / annotation_name(k)).write_text(
            annotation_xml(k, frame_targets, sigma, width, height), encoding="utf-8"
        )
    return len(images)


def _prepare_folder(folder: Path) -> None:
    for sub in (IMAGE_DIR, ANNOTATION_DIR):
        path = folder / sub
        if path.is_dir() and any(path.iterdir()):
            raise FileExistsError(
                f"{path} already holds files; write to an empty folder (stale frames would "
                "mix with the new ones)"
            )
        path.mkdir(parents=True, exist_ok=True)


def write_splits(
    root: str | Path,
    splits: Mapping[str, SeqDataset],
    workers: int = 2,
    progress: bool = True,
) -> None:
    """Write each split to ``root/NAME/`` in the official layout.

    Parameters
    ----------
    root : path
        Dataset root; created if missing. Each ``root/NAME/image`` and ``root/NAME/annotation``
        must be absent or empty.
    splits : mapping of str to SeqDataset
        Split name → frames in trajectory order (frame k is written as ``image_{k}.png``).
    workers : int
        Writer processes (1 writes in this process). Frames are written in chunks of
        :data:`CHUNK_FRAMES`; the output does not depend on the worker count.
    progress : bool
        Show a tqdm bar (frames) on stderr.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    jobs = []
    for name, ds in splits.items():
        folder = Path(root) / name
        _prepare_folder(folder)
        images = np.ascontiguousarray(ds.images, dtype=np.uint8)
        for start in range(0, len(ds), CHUNK_FRAMES):
            stop = start + CHUNK_FRAMES
            jobs.append((str(folder), start, images[start:stop], ds.targets[start:stop], ds.sigma))
    total = sum(len(job[2]) for job in jobs)
    with tqdm(total=total, unit="frame", desc="writing", disable=not progress) as bar:
        workers = min(workers, len(jobs))
        if workers <= 1:
            _advance(bar, map(_write_frames, jobs))
            return
        # spawn: safe whatever threads this process runs (tqdm, BLAS); costs ~0.5 s to start.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            _advance(bar, pool.imap_unordered(_write_frames, jobs))


def _advance(bar: tqdm, counts: Iterable[int]) -> None:
    for n in counts:
        bar.update(n)


def write_split(
    folder: str | Path, ds: SeqDataset, workers: int = 1, progress: bool = False
) -> None:
    """Write one split to ``folder/image`` and ``folder/annotation`` (see :func:`write_splits`).

    Defaults suit small library use: one process, no progress bar.
    """
    folder = Path(folder)
    write_splits(folder.parent, {folder.name: ds}, workers=workers, progress=progress)


def numbered_files(folder: Path, suffixes: tuple[str, ...],
                   error: type[Exception] = DatasetError) -> list[tuple[int, str, Path]]:
    """(number, number as written, path) of every file in ``folder`` whose suffix is one of
    ``suffixes`` (lower case), sorted by the first integer in its name (``image_12.png`` → 12).

    Raises
    ------
    error (default DatasetError)
        A name without a number, or two files with the same number.
    """
    found: dict[int, tuple[int, str, Path]] = {}
    for path in folder.iterdir():
        if path.suffix.lower() not in suffixes:
            continue
        match = _FIRST_INT.search(path.name)
        if match is None:
            raise error(f"{path}: no frame number in the file name; frames are ordered by the "
                        f"first integer in their names (e.g. image_12.png)")
        number = int(match.group())
        if number in found:
            raise error(f"{path} and {found[number][2]} both carry frame number {number}")
        found[number] = (number, match.group(), path)
    return [found[k] for k in sorted(found)]


def _check_numbering(image_dir: Path, numbers: list[int]) -> None:
    """Frames must be numbered 0 … N−1 (``numbers`` sorted and without repeats)."""
    for expected, k in enumerate(numbers):
        if k != expected:
            raise DatasetError(
                f"{image_dir}: {image_name(expected)} is missing; frames must be numbered "
                "0 … N−1 without gaps, because trajectory j is frames 20j … 20j+19"
            )


def _text(elem: ET.Element, path: str, xml_path: Path) -> str:
    found = elem.find(path)
    if found is None or found.text is None:
        raise DatasetError(
            f"{xml_path}: missing <{path}>; the annotation does not follow the SeqCSIST schema "
            "(regenerate it)"
        )
    return found.text


def _read_annotation(xml_path: Path) -> tuple[np.ndarray, float, int, int]:
    """Targets (K, 3), sigma, width and height from one annotation file."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DatasetError(
            f"{xml_path}: annotation missing for image {xml_path.stem.removeprefix('COS')}; "
            "every image_{k}.png needs annotation/COS{k}.xml (regenerate the split or remove "
            "the image)"
        ) from None
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(
            f"{xml_path}: unreadable annotation ({exc}); regenerate the file"
        ) from exc
    try:
        sigma = float(_text(root, "sigma", xml_path))
        width = int(_text(root, "size/width", xml_path))
        height = int(_text(root, "size/height", xml_path))
        targets = [
            [float(_text(obj, f"coordinate/{field}", xml_path))
             for field in ("xc", "yc", "brightness")]
            for obj in root.iter("object")
        ]
    except ValueError as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{xml_path}: bad number in annotation ({exc}); regenerate it") from exc
    return np.asarray(targets, dtype=np.float64).reshape(-1, 3), sigma, width, height


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"{path}: cannot decode the PNG (corrupt or not a PNG); regenerate it")
    if image.ndim != 2 or image.dtype != np.uint8:
        raise DatasetError(
            f"{path}: expected an 8-bit single-channel image, got dtype {image.dtype} and shape "
            f"{image.shape}; SeqCSIST frames are 8-bit greyscale"
        )
    return image


def read_split(folder: str | Path, traj_len: int = 20) -> SeqDataset:
    """Read one split folder of the official layout.

    Parameters
    ----------
    folder : path
        Folder holding ``image/`` and ``annotation/``.
    traj_len : int
        Frames per trajectory; the frame count must be a multiple of it.

    Returns
    -------
    SeqDataset
        Frames in numeric file order (first integer in the name), targets NaN-padded to the
        largest count in the split.

    Raises
    ------
    DatasetError
        Missing folder or annotation, no images, gaps in the numbering, a frame count that is
        not a multiple of ``traj_len``, an unreadable PNG or XML, an image whose size differs
        from its annotation or from the first frame, or mixed PSF sigmas.
    """
    folder = Path(folder)
    image_dir, ann_dir = folder / IMAGE_DIR, folder / ANNOTATION_DIR
    for sub in (image_dir, ann_dir):
        if not sub.is_dir():
            raise DatasetError(
                f"{sub}: folder missing; a split folder holds image/image_{{k}}.png and "
                "annotation/COS{k}.xml (write one with `python -m sim generate`)"
            )
    entries = numbered_files(image_dir, (".png",))
    if not entries:
        raise DatasetError(f"{image_dir}: no PNG images; generate the split first")
    _check_numbering(image_dir, [k for k, _, _ in entries])
    if len(entries) % traj_len:
        raise DatasetError(
            f"{folder}: {len(entries)} frames is not a multiple of the trajectory length "
            f"{traj_len}; a split must hold whole trajectories (frames 20j … 20j+19)"
        )
    images, targets = [], []
    sigma = shape = None
    for _, number, path in entries:
        image = _read_image(path)
        xml_path = ann_dir / annotation_name(number)
        frame_targets, frame_sigma, width, height = _read_annotation(xml_path)
        shape = shape or (height, width)
        if image.shape != (height, width) or image.shape != shape:
            raise DatasetError(
                f"{path}: image is {image.shape[0]}×{image.shape[1]} (rows×cols) but "
                f"{xml_path.name} says {height}×{width} and the split uses "
                f"{shape[0]}×{shape[1]}; regenerate the frame"
            )
        sigma = frame_sigma if sigma is None else sigma
        if frame_sigma != sigma:
            raise DatasetError(
                f"{xml_path}: sigma {frame_sigma} differs from the split's {sigma}; one split "
                "must use one PSF"
            )
        images.append(image)
        targets.append(frame_targets)
    k_max = max(len(t) for t in targets)
    padded = np.full((len(targets), k_max, 3), np.nan)
    for i, frame_targets in enumerate(targets):
        padded[i, : len(frame_targets)] = frame_targets
    return SeqDataset(np.stack(images), padded, traj_len=traj_len, sigma=sigma)


def available_splits(root: str | Path) -> dict[str, Path]:
    """Splits found in a dataset root: name → split folder (with ``image/``) or ``NAME.npz``.

    A split present in both formats resolves to its folder.
    """
    root = Path(root)
    found = {p.stem: p for p in sorted(root.glob("*.npz")) if p.is_file()}
    found.update({p.name: p for p in sorted(root.iterdir()) if (p / IMAGE_DIR).is_dir()})
    return dict(sorted(found.items()))


def load_dataset(path: str | Path, split: str | None = None, traj_len: int = 20) -> SeqDataset:
    """Load one split of either format into a :class:`SeqDataset`.

    Parameters
    ----------
    path : path
        A ``.npz`` file (compact format), a split folder (holding ``image/`` and
        ``annotation/``), or a dataset root holding split folders or ``SPLIT.npz`` files.
    split : str, optional
        Split name; required (and only used) when ``path`` is a dataset root. No default
        is assumed: omitting it raises an error listing the available splits.
    traj_len : int
        Frames per trajectory (official layout only; the compact file stores its own).

    Raises
    ------
    DatasetError
        The path does not exist or holds no dataset, the split is missing or not given,
        or a file is malformed (see :func:`read_split`).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DatasetError(
                f"{path}: not a dataset; pass a .npz file, a split folder (image/ + "
                "annotation/) or a dataset root"
            )
        return load_npz(path)
    if not path.is_dir():
        raise DatasetError(
            f"{path}: no such file or folder; create a dataset with "
            f"`python -m sim generate --out {path} --trajectories N --seed S`"
        )
    if (path / IMAGE_DIR).is_dir() or (path / ANNOTATION_DIR).is_dir():
        return read_split(path, traj_len)
    found = available_splits(path)
    if not found:
        raise DatasetError(
            f"{path}: no dataset here (expected split folders train/ val/ test/ with image/ and "
            "annotation/, or train.npz val.npz test.npz); create one with `python -m sim "
            "generate`"
        )
    if split is None or split not in found:
        problem = "is a dataset root; choose a split" if split is None else (
            f"has no split {split!r}"
        )
        raise DatasetError(f"{path} {problem} (available: {', '.join(found)})")
    target = found[split]
    return load_npz(target) if target.suffix == ".npz" else read_split(target, traj_len)
