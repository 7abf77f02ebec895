"""Plain-dict model registry: ``get_model(name, **cfg)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable

from models.base import Unmixer

MODELS: dict[str, Callable[..., Unmixer]] = {}


def register_model(name: str):
    """Decorator registering a builder ``fn(**cfg) -> Unmixer`` under ``name``."""

    def wrap(fn):
        if name in MODELS:
            raise ValueError(f"a model is already registered under the name {name!r}")
        MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(MODELS)


def get_model(name: str, **cfg) -> Unmixer:
    """Build a registered model; an unknown name lists the valid ones."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None
    return builder(**cfg)
