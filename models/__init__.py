"""Unmixing models, training, evaluation (CSO-mAP) and sub-pixel extraction.

Every model module is imported here explicitly so that the registry is complete.
"""

from models import derefnet as _derefnet  # noqa: F401  (registers "derefnet")
from models import fastunmix as _fastunmix  # noqa: F401  (registers "fastunmix")
from models import ista as _ista  # noqa: F401
from models.registry import MODELS, get_model, list_models, register_model

__all__ = ["MODELS", "get_model", "list_models", "register_model"]
