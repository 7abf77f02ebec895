"""The model registry: name -> where the model's class lives, imported only when asked for.

``MODELS`` is written out by hand, like the stage table ``stages.STAGES``: to add a model,
add one line. Nothing is imported until :func:`get_model` builds a model, so importing
:mod:`models` (or its torch-free metric :mod:`models.metric`) never pulls in torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.base import UnmixingModel


@dataclass(frozen=True)
class ModelEntry:
    """Where a registered model lives and what family it belongs to.

    Attributes
    ----------
    target : str
        ``"module:callable"``; the callable builds the model from its config keywords.
    family : str
        The model family, also the sub-package it lives in (``classical``, ``multiframe``…).
    """

    target: str
    family: str


#: Model name (as used by ``--model`` and training configs) -> its entry.
MODELS: dict[str, ModelEntry] = {
    "ista": ModelEntry("models.classical.ista:IstaUnmixer", "classical"),
    "bid": ModelEntry("models.classical.bid:BidUnmixer", "classical"),
    "lista": ModelEntry("models.sparse.lista:Lista", "sparse"),
    "liht": ModelEntry("models.sparse.liht:Liht", "sparse"),
    "lamp": ModelEntry("models.sparse.lamp:Lamp", "sparse"),
    "tilista": ModelEntry("models.sparse.tilista:TiLista", "sparse"),
    "istanet": ModelEntry("models.unfolding.istanet:IstaNet", "unfolding"),
    "istanet_plus": ModelEntry("models.unfolding.istanet_plus:IstaNetPlus", "unfolding"),
    "istanet_pp": ModelEntry("models.unfolding.istanet_pp:IstaNetPP", "unfolding"),
    "fistanet": ModelEntry("models.unfolding.fistanet:FistaNet", "unfolding"),
    "usrnet": ModelEntry("models.unfolding.usrnet:UsrNet", "unfolding"),
    "rpcanet": ModelEntry("models.unfolding.rpcanet:RpcaNet", "unfolding"),
    "derefnet": ModelEntry("models.multiframe.derefnet:DeRefNet", "multiframe"),
    "fastunmix": ModelEntry("models.multiframe.fastunmix:FastUnmixer", "multiframe"),
    "srcnn": ModelEntry("models.sr.srcnn:SRCNN", "sr"),
    "espcn": ModelEntry("models.sr.espcn:ESPCN", "sr"),
    "edsr": ModelEntry("models.sr.edsr:EDSR", "sr"),
    "rdn": ModelEntry("models.sr.rdn:RDN", "sr"),
    "dbpn": ModelEntry("models.sr.dbpn:DBPN", "sr"),
    "gmfn": ModelEntry("models.sr.gmfn:GMFN", "sr"),
    "tdan": ModelEntry("models.sr.tdan:TDAN", "sr"),
    "srgan": ModelEntry("models.sr.srgan:SRGAN", "sr"),
    "bsrgan": ModelEntry("models.sr.bsrgan:BSRGAN", "sr"),
    "esrgan": ModelEntry("models.sr.esrgan:ESRGAN", "sr"),
}


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(MODELS)


def model_builder(name: str):
    """Import and return the callable that builds model ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not registered (the message lists the registered models).
    """
    try:
        entry = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None
    module_name, _, attr = entry.target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def get_model(name: str, **cfg) -> UnmixingModel:
    """Build registered model ``name`` with config keywords ``cfg``."""
    return model_builder(name)(**cfg)
