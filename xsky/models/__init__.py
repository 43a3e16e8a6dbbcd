"""Model registry, model contract and the bundled models.

The contract (:class:`ModelSpec`, :class:`ModalitySpec`, :class:`ModelRef`) and the model
cards (:class:`ModelCard`, :class:`WeightFile`) import without torch. Everything else (the
registry, :class:`EmbeddingModel`, :func:`wrap`, the bundled models) needs torch
(``pip install 'xsky[torch]'``) and is imported on first use; the first use also registers
the bundled models (test-tiny, satclip-*, skysense-*, galileo-*, presto).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .card import ModelCard, WeightFile
from .spec import LocationRef, ModalitySpec, ModelRef, ModelSpec

if TYPE_CHECKING:
    from ._base import EmbeddingModel, state_dict_sha256
    from ._checkpoint import LoadReport, file_sha256, load_checkpoint, load_weights
    from ._download import cached_weights, weights_cache_dir
    from ._registry import (
        create_model,
        download_weights,
        get_model_card,
        get_model_spec,
        list_models,
        model_options,
        register_model,
    )
    from ._wrap import WrappedModel, wrap

__all__ = [
    "EmbeddingModel",
    "LoadReport",
    "LocationRef",
    "ModalitySpec",
    "ModelCard",
    "ModelRef",
    "ModelSpec",
    "WeightFile",
    "WrappedModel",
    "cached_weights",
    "create_model",
    "download_weights",
    "file_sha256",
    "get_model_card",
    "get_model_spec",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "model_options",
    "register_model",
    "state_dict_sha256",
    "weights_cache_dir",
    "wrap",
]

_LAZY = {
    "EmbeddingModel": "_base",
    "state_dict_sha256": "_base",
    "LoadReport": "_checkpoint",
    "file_sha256": "_checkpoint",
    "load_checkpoint": "_checkpoint",
    "load_weights": "_checkpoint",
    "cached_weights": "_download",
    "download_weights": "_registry",
    "weights_cache_dir": "_download",
    "create_model": "_registry",
    "get_model_card": "_registry",
    "get_model_spec": "_registry",
    "list_models": "_registry",
    "model_options": "_registry",
    "register_model": "_registry",
    "WrappedModel": "_wrap",
    "wrap": "_wrap",
}
# importing these registers the bundled models
_BUNDLED = ("_tiny", "satclip", "skysense", "galileo", "presto", "default")
_TORCH_SUBMODULES = {*_BUNDLED, "_base", "_checkpoint", "_download", "_registry", "_wrap",
                     "_resnet", "_sh",
                     "_skysense_vit", "_swinv2", "_vit_timm"}


def _load_bundled() -> None:
    from .._interop import require

    require("torch", "xsky.models")
    for mod in _BUNDLED:
        importlib.import_module(f".{mod}", __name__)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        _load_bundled()
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _TORCH_SUBMODULES:
        _load_bundled()
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xsky.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
