"""Model registry, model contract and the bundled models.

Importing this module registers every bundled model (it needs torch: ``pip install
'xsky[torch]'``).
"""

from __future__ import annotations

from .._interop import require

require("torch", "xsky.models")

# Importing the model modules registers them (test-tiny, satclip-*, skysense-*).
from . import _tiny, satclip, skysense  # noqa: E402,F401
from ._base import EmbeddingModel, ModelRef, state_dict_sha256  # noqa: E402
from ._checkpoint import file_sha256, load_checkpoint  # noqa: E402
from ._registry import create_model, get_model_spec, list_models, register_model  # noqa: E402
from ._spec import ModalitySpec, ModelSpec  # noqa: E402
from ._wrap import WrappedModel, wrap  # noqa: E402

__all__ = [
    "EmbeddingModel",
    "ModalitySpec",
    "ModelRef",
    "ModelSpec",
    "WrappedModel",
    "create_model",
    "file_sha256",
    "get_model_spec",
    "list_models",
    "load_checkpoint",
    "register_model",
    "state_dict_sha256",
    "wrap",
]
