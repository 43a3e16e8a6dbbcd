"""Encoder features for training: fused and per-modality pixel features, with a validity mask.

:func:`encode` runs an embedding model on a batch of engine inputs (the format of
:class:`~xsky.train.sampler.WindowSampler`) *with* gradients and returns :class:`Features`.
Unlike inference (``embed_windows`` under ``torch.inference_mode``, NaN where a pixel has no
valid input), invalid pixels are 0 in every feature map and ``False`` in the mask, so losses
can mask them out without NaN ever entering the autograd graph.

For :class:`~xsky.models.skysense.SkySense` it also returns each modality's pixel features
before fusion: the mean, over the pixel's valid dates, of the modality's tokens as the fusion
transformer reads them (after ``porj_linear``; S2 tokens include the date code). Any other
:class:`~xsky.models.EmbeddingModel` gives the fused feature of ``embed_windows`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..exceptions import ArgumentError, DimensionError, ModelError
from ..models.skysense import SkySense

__all__ = ["FeatureEncoder", "Features", "encode"]


@dataclass
class Features:
    """Pixel features of a batch of windows.

    Attributes
    ----------
    fused
        ``(B, D, W, W)`` fused features; 0 where ``valid`` is False.
    modalities
        Per-modality pixel features before fusion, ``{name: (B, D, W, W)}`` (empty for
        models without them); 0 where the modality has no valid date.
    valid
        ``(B, W, W)`` bool: the pixel has at least one valid input.
    modality_valid
        ``{name: (B, W, W)}`` bool: the pixel has a valid date of that modality (same keys
        as ``modalities``).
    """

    fused: torch.Tensor
    modalities: dict[str, torch.Tensor] = field(default_factory=dict)
    valid: torch.Tensor | None = None
    modality_valid: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fused.ndim != 4 or self.fused.shape[-1] != self.fused.shape[-2]:
            raise DimensionError(f"Features.fused must be (B, D, W, W), got "
                                 f"{tuple(self.fused.shape)}")
        b, _, h, w = self.fused.shape
        if self.valid is None:
            self.valid = torch.ones((b, h, w), dtype=torch.bool, device=self.fused.device)
        if tuple(self.valid.shape) != (b, h, w):
            raise DimensionError(f"Features.valid must be {(b, h, w)} (B, W, W), got "
                                 f"{tuple(self.valid.shape)}")
        for name, x in self.modalities.items():
            if x.ndim != 4 or x.shape[0] != b or x.shape[-2:] != (h, w):
                raise DimensionError(f"Features.modalities[{name!r}] must be (B={b}, D, {h}, "
                                     f"{w}), got {tuple(x.shape)}")
            self.modality_valid.setdefault(name, self.valid)

    def mask(self, stream: str) -> torch.Tensor:
        """Validity ``(B, W, W)`` of ``stream`` (``"fused"`` or a modality name)."""
        assert self.valid is not None
        return self.valid if stream == "fused" else self.modality_valid[stream]

    def stream(self, name: str) -> torch.Tensor:
        """Feature map of ``name`` (``"fused"`` or a modality name)."""
        if name == "fused":
            return self.fused
        if name not in self.modalities:
            raise ArgumentError(f"these features have no {name!r} stream; they have "
                                f"{['fused', *self.modalities]}")
        return self.modalities[name]

    def detach(self) -> Features:
        """A copy with every tensor detached from the graph."""
        return Features(self.fused.detach(),
                        {k: v.detach() for k, v in self.modalities.items()},
                        None if self.valid is None else self.valid.detach(),
                        dict(self.modality_valid))


def _unwrap(model: Any) -> Any:
    # DistributedDataParallel / FeatureEncoder wrappers: the real model is `.module`
    while isinstance(model, (FeatureEncoder, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def encode(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> Features:
    """Features of a batch with gradients (no ``inference_mode``, no NaN).

    Parameters
    ----------
    model
        A :class:`~xsky.models.skysense.SkySense` (fused and per-modality features) or any
        :class:`~xsky.models.EmbeddingModel` whose ``embed_windows`` returns
        ``(B, D, W, W)`` (fused only; NaN pixels become invalid); or a
        :class:`FeatureEncoder` of one, possibly inside ``DistributedDataParallel`` (then
        called through DDP's forward).
    inputs
        Engine model inputs (``"<m>"``, ``"<m>_valid"``, ``"<m>_doy"``, ...); other keys
        (``"latlon"``, ``"window"``) are ignored by SkySense.

    Returns
    -------
    Features
        For SkySense, ``fused`` equals ``model.embed_windows(inputs)`` on valid pixels.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel) and isinstance(
            model.module, FeatureEncoder):
        out: Features = model(inputs)  # through DDP's forward, so gradients are synchronised
        return out
    model = _unwrap(model)
    if isinstance(model, SkySense):
        return _encode_skysense(model, inputs)
    embed = getattr(model, "embed_windows", None)
    if embed is None:
        raise ArgumentError(f"encode needs an EmbeddingModel (with embed_windows), got "
                            f"{type(model).__name__}")
    y = embed(inputs)
    if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[-1] != y.shape[-2]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ModelError(f"{type(model).__name__}.embed_windows returned {shape}; training "
                         "needs dense (B, D, W, W) features (a model with output='dense')")
    valid = torch.isfinite(y).all(1)
    return Features(torch.where(valid[:, None], y, torch.zeros((), dtype=y.dtype)), {}, valid)


def _encode_skysense(model: SkySense, inputs: Mapping[str, torch.Tensor]) -> Features:
    # SkySense.embed_windows' computation (its window_tokens, then the fusion), minus the NaN
    # fill, plus each modality's masked date mean of the tokens it feeds the fusion.
    tokens, (n, w) = model.window_tokens(inputs)
    per_mod: dict[str, torch.Tensor] = {}
    per_valid: dict[str, torch.Tensor] = {}
    for mod, (tok, keep) in tokens.items():
        # masked mean over dates: (N*W*W, T, D) -> (N*W*W, D); 0 without a valid date
        k = keep.to(tok.dtype)[..., None]
        mean = (tok * k).sum(1) / k.sum(1).clamp(min=1)
        per_mod[mod] = mean.view(n, w, w, -1).permute(0, 3, 1, 2)
        per_valid[mod] = keep.any(1).view(n, w, w)
    key_mask = torch.cat([keep for _, keep in tokens.values()], dim=1)
    fused = model.fusion.encode(torch.cat([tok for tok, _ in tokens.values()], dim=1), key_mask)
    any_valid = key_mask.any(1)
    fused = torch.where(any_valid[:, None], fused, torch.zeros((), dtype=fused.dtype))
    return Features(fused.view(n, w, w, -1).permute(0, 3, 1, 2), per_mod,
                    any_valid.view(n, w, w), per_valid)


class FeatureEncoder(nn.Module):
    """``nn.Module`` whose forward is :func:`encode` of the wrapped model.

    Wrap this (not the model) in ``DistributedDataParallel``: DDP synchronises gradients
    only for computations that go through its own ``forward``.

    Parameters
    ----------
    model
        The embedding model (kept as ``.module``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> Features:
        return encode(self.module, inputs)
