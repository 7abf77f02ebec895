"""Unmixing models, the CSO-mAP metric, training, evaluation and sub-pixel extraction.

Layout: the machinery at the top (:mod:`models.base` the interface, :mod:`models.registry`,
:mod:`models.metric` the torch-free metric, :mod:`models.protocol` the evaluation protocol,
:mod:`models.harness` running a model over it, :mod:`models.extract`, training, weights, CLI)
and the methods in family sub-packages (:mod:`models.classical`, :mod:`models.sparse`,
:mod:`models.unfolding`, :mod:`models.sr`, :mod:`models.multiframe`), with shared layers in
:mod:`models.layers`. The registry is lazy: importing this package imports no model and no
torch.

``models`` may import :mod:`sim`; it never imports :mod:`stages` or :mod:`pipeline`.
"""

from models.registry import MODELS, get_model, list_models

__all__ = ["MODELS", "get_model", "list_models"]
