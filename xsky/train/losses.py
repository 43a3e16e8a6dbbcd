"""Training objectives as plain torch functions and modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import DimensionError

__all__ = ["INIT_LOGIT_SCALE", "CLIPLoss", "clip_loss"]

#: CLIP's initial temperature: logits are scaled by exp(ln(1/0.07)) = 1/0.07 at the start.
INIT_LOGIT_SCALE = math.log(1 / 0.07)


def clip_loss(
    image_features: torch.Tensor,
    location_features: torch.Tensor,
    logit_scale: torch.Tensor | float = INIT_LOGIT_SCALE,
) -> torch.Tensor:
    """Symmetric CLIP loss between paired image and location embeddings (SatCLIP's objective).

    Both sets of features are L2-normalised (location features are cast to the image
    features' dtype), ``logits = exp(logit_scale) * img @ loc.T``, and the loss is the mean of
    the cross-entropy over rows (image to location) and over columns (location to image),
    with the matching pair on the diagonal.

    Parameters
    ----------
    image_features
        ``(N, D)`` image embeddings.
    location_features
        ``(N, D)`` location embeddings of the same samples, in the same order.
    logit_scale
        Log of the inverse temperature (a learnable scalar in :class:`CLIPLoss`); not clamped,
        as in SatCLIP.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Examples
    --------
    >>> import torch
    >>> x = torch.eye(3)
    >>> round(float(clip_loss(x, x, logit_scale=0.0)), 4)  # log(1 + 2/e)
    0.5514
    """
    if image_features.ndim != 2 or location_features.ndim != 2:
        raise DimensionError(
            f"clip_loss takes (N, D) features, got image {tuple(image_features.shape)} and "
            f"location {tuple(location_features.shape)}"
        )
    if image_features.shape != location_features.shape:
        raise DimensionError(
            f"image features {tuple(image_features.shape)} and location features "
            f"{tuple(location_features.shape)} must have the same shape (one pair per row); "
            "project them to a common width first"
        )
    if image_features.shape[0] < 2:
        raise DimensionError("clip_loss needs at least 2 pairs per batch (the others are negatives)")
    img = F.normalize(image_features, dim=-1)
    loc = F.normalize(location_features.to(image_features.dtype), dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=img.dtype, device=img.device).exp()
    logits = scale * img @ loc.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


class CLIPLoss(nn.Module):
    """:func:`clip_loss` with a learnable ``logit_scale`` initialised to ln(1/0.07).

    Parameters
    ----------
    init_logit_scale
        Initial log inverse temperature.
    max_logit_scale
        Optional upper clamp of ``logit_scale`` in the forward pass (OpenCLIP uses ln(100));
        ``None`` (default) leaves it unclamped like SatCLIP.

    Examples
    --------
    >>> import torch
    >>> loss = CLIPLoss()
    >>> round(float(loss.logit_scale), 4)
    2.6593
    >>> loss(torch.randn(4, 8), torch.randn(4, 8)).shape
    torch.Size([])
    """

    def __init__(self, init_logit_scale: float = INIT_LOGIT_SCALE,
                 max_logit_scale: float | None = None) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_logit_scale = max_logit_scale

    def forward(self, image_features: torch.Tensor,
                location_features: torch.Tensor) -> torch.Tensor:
        scale: torch.Tensor = self.logit_scale
        if self.max_logit_scale is not None:
            scale = scale.clamp(max=self.max_logit_scale)
        return clip_loss(image_features, location_features, scale)
