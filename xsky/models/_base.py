"""The runtime side of the model contract: an ``nn.Module`` with a spec and a small reference.

Every model the engine runs is an :class:`EmbeddingModel`. Its :class:`ModelRef` is what the
dask graph carries: a name, a weights path and a digest, never the weights themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .spec import ModelRef, ModelSpec

__all__ = ["EmbeddingModel", "ModelRef", "state_dict_sha256"]


def state_dict_sha256(module: nn.Module) -> str:
    """Digest of a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.device.type == "meta":
            continue
        arr = t.detach().cpu().contiguous()
        if arr.dtype == torch.bfloat16:
            arr = arr.view(torch.int16)
        h.update(np.ascontiguousarray(arr.numpy()).tobytes())
    return h.hexdigest()


class EmbeddingModel(nn.Module):
    """Base class of models the engine can run.

    Subclasses set :attr:`spec` and implement :meth:`embed_windows`.

    Inputs follow the spec: for a per-date model (``fuses_time=False``),
    ``inputs[modality]`` is ``(N, C, W, W)`` with ``W = window * grid_factor``;
    for a time-fusing model it is ``(N, C, T, W, W)`` with ``inputs[modality + "_valid"]``
    (bool ``(N, T, W, W)``) and ``inputs[modality + "_doy"]`` (int64 ``(N, T)``).
    Inputs are normalised and invalid pixels filled with 0 (the band mean).
    The output is ``(N, feature_dim, window // stride, window // stride)`` for
    ``output="dense"`` and ``(N, feature_dim)`` for ``output="pooled"``.
    """

    spec: ModelSpec
    weights_sha256: str
    ref: ModelRef

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def set_ref(
        self,
        name: str | None,
        weights: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        sha256: str | None = None,
    ) -> EmbeddingModel:
        """Record how to rebuild this model (called by the registry)."""
        digest = sha256 or state_dict_sha256(self)
        self.weights_sha256 = digest
        self.ref = ModelRef(
            name=name,
            weights=weights,
            overrides=tuple(sorted((overrides or {}).items())),
            sha256=digest,
            spec=self.spec,
        )
        return self
