"""Fixtures shared by several test files."""

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from sim.dataset import save_npz, simulate


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A tiny training set: ``train.npz`` (2 trajectories) and ``val.npz`` (1)."""
    root = tmp_path_factory.mktemp("data")
    save_npz(root / "train.npz", simulate(2, seed=1))
    save_npz(root / "val.npz", simulate(1, seed=2))
    return root


@pytest.fixture(scope="session", autouse=True)
def capacity_cache(tmp_path_factory):
    """The chain's capacity cache (pipeline.run.capacity) in a temp folder, not the user's."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


def _pixel_fraction(p: int, centre: float, sigma: float) -> float:
    s = sigma * math.sqrt(2.0)
    return 0.5 * (math.erf((p + 0.5 - centre) / s) - math.erf((p - 0.5 - centre) / s))


def _render_annotation(xml_path):
    """An annotation rendered independently of sim/ (closed erf form, its own ``sigma``):
    (image (H, W) float64 unrounded, [(row, col, brightness)], sigma)."""
    root = ET.parse(xml_path).getroot()
    objects = [
        tuple(float(obj.find(f"coordinate/{f}").text) for f in ("xc", "yc", "brightness"))
        for obj in root.findall("object")
    ]
    sigma = float(root.find("sigma").text)
    height, width = (int(root.find(f"size/{f}").text) for f in ("height", "width"))
    image = np.zeros((height, width))
    for row, col, brightness in objects:
        for p in range(height):
            fr = _pixel_fraction(p, row, sigma)
            for q in range(width):
                image[p, q] += brightness * fr * _pixel_fraction(q, col, sigma)
    return image, objects, sigma


@pytest.fixture(scope="session")
def render_xml():
    """``render_xml(path) -> (image, objects, sigma)``: an official-layout annotation
    rendered by an independent renderer (for checks of generated sets)."""
    return _render_annotation
