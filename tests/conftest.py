"""Fixtures shared by several test files."""

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
