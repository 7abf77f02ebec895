"""The chain's vocabulary: message types, the stage protocol and the stages.

``STAGES`` maps the ``kind`` of a stage in the pipeline config to the import path
``"module:Class"`` of its class, written out by hand (no import-time scanning, no decorator
side effects): to add a stage, add one line. :func:`stage_class` imports the class on demand,
so a process that runs one stage imports only that stage's module (a detector process never
pays for importing torch).

``stages`` may import :mod:`models` and :mod:`sim`, never :mod:`pipeline`: stage kinds that own
a socket (the external-input gate) are added by the pipeline on top of ``STAGES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from models.config import ConfigError
from stages.base import Stage

#: Stage kind (as written in the pipeline config) -> "module:Class".
STAGES: dict[str, str] = {
    # sources
    "simulator": "stages.source:SimulatorSource",
    # processing, in chain order
    "detector": "stages.detector:Detector",
    "cropper": "stages.cropper:Cropper",
    "unmixer": "stages.unmixer:Unmixer",
    "extractor": "stages.extractor:Extractor",
    "tracker": "stages.tracker:Tracker",
    # sinks
    "scoring": "stages.scoring:Scoring",
    "console": "stages.sinks:ConsoleSummary",
    "jsonl": "stages.sinks:JsonLinesWriter",
    "overlay": "stages.sinks:OverlayWriter",
}


def stage_class(kind: str, kinds: Mapping[str, str] = STAGES) -> type[Stage]:
    """Import and return the stage class registered as ``kind`` in ``kinds``.

    ``kinds`` defaults to :data:`STAGES`; the pipeline passes its own table, which adds the
    stage kinds that own sockets (they live in ``pipeline/``, above this package).

    Raises
    ------
    ConfigError
        If ``kind`` is not registered (the message lists the registered kinds).
    """
    if kind not in kinds:
        raise ConfigError(f"unknown stage kind {kind!r}; expected one of {sorted(kinds)}")
    module_name, _, class_name = kinds[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
