"""Bring-your-own-model: turn a plain torch module into an :class:`EmbeddingModel`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..exceptions import ArgumentError, ModelError
from ..modalities import canonical_band
from ._base import EmbeddingModel, state_dict_sha256
from .spec import ModalitySpec, ModelSpec

__all__ = ["WrappedModel", "wrap"]


class WrappedModel(EmbeddingModel):
    """A user module mapping ``(N, C, window, window)`` to ``(N, F, window/stride, window/stride)``."""

    def __init__(self, module: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.module = module
        self.spec = spec

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = inputs[self.spec.modalities[0].name]
        out = self.module(x)
        n = self.spec.window // self.spec.stride
        want = (x.shape[0], self.spec.feature_dim, n, n)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(
                f"wrapped model {self.spec.name!r} returned {got} for input {tuple(x.shape)}; "
                f"expected {want} = (N, feature_dim, window/stride, window/stride). Check "
                "feature_dim, window and stride passed to xsky.models.wrap."
            )
        return out


def _coerce_normalize(
    normalize: Any, bands: tuple[str, ...]
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if normalize is None:
        return None, None
    if isinstance(normalize, Mapping):
        missing = [b for b in bands if b not in normalize]
        if missing:
            raise ArgumentError(
                f"normalize has no (mean, std) for bands {missing}; give one pair per band in "
                f"{bands}"
            )
        pairs = [normalize[b] for b in bands]
        return tuple(float(p[0]) for p in pairs), tuple(float(p[1]) for p in pairs)
    if isinstance(normalize, Sequence) and len(normalize) == 2:
        mean, std = normalize
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    raise ArgumentError(
        "normalize must be None, a (mean, std) pair of per-band sequences, or a dict "
        f"band -> (mean, std); got {type(normalize).__name__}"
    )


def wrap(
    module: nn.Module,
    *,
    bands: Sequence[str],
    window: int,
    stride: int,
    feature_dim: int,
    normalize: Any = None,
    units: str = "reflectance",
    name: str | None = None,
    modality: str = "s2",
    batch_size: int = 32,
) -> WrappedModel:
    """Turn a torch module into a model :func:`xsky.embed` accepts.

    Parameters
    ----------
    module
        Maps ``(N, len(bands), window, window)`` float32 to
        ``(N, feature_dim, window // stride, window // stride)``.
    bands
        Canonical band names in the order the module takes them (aliases such as ``"red"``
        are resolved).
    window, stride, feature_dim
        Input tile size, output stride and number of output features.
    normalize
        ``None`` (no normalisation), a ``(mean, std)`` pair of per-band sequences, or a dict
        ``band -> (mean, std)``, in ``units``.
    units
        Units the module expects its input in: ``"reflectance"`` (default) or ``"dn"``.
    name
        Name recorded in the output's attrs; defaults to ``"wrapped-<digest>"``.
    modality
        Modality key of the input (``"s2"`` by default).
    batch_size
        Default number of windows per forward pass.

    Returns
    -------
    WrappedModel
        In eval mode. :func:`xsky.embed` puts it into this process's model cache when it
        is passed in (on a distributed cluster it ships it to the workers once with a
        worker plugin); :func:`~xsky.models.register_model` makes it available by name.

    Examples
    --------
    >>> import torch, xsky
    >>> net = torch.nn.Conv2d(4, 8, kernel_size=4, stride=4)
    >>> model = xsky.models.wrap(net, bands=["blue", "green", "red", "nir"], window=16,
    ...                          stride=4, feature_dim=8)
    >>> model.spec.bands
    ('B02', 'B03', 'B04', 'B08')
    """
    if not isinstance(module, nn.Module):
        raise ArgumentError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}")
    cbands = tuple(canonical_band(b, modality) for b in bands)
    mean, std = _coerce_normalize(normalize, cbands)
    spec = ModelSpec(
        name=name or "wrapped",
        modalities=(ModalitySpec(modality, cbands, mean, std, units=units),),  # type: ignore[arg-type]
        window=window,
        stride=stride,
        feature_dim=feature_dim,
        default_batch_size=batch_size,
    )
    model = WrappedModel(module, spec)
    model.eval()
    digest = state_dict_sha256(model)
    if name is None:
        model.spec = spec.replace(name=f"wrapped-{digest[:12]}")
    model.set_ref(None, sha256=digest)
    return model
