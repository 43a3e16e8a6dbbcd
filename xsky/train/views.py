"""Augmented views of a training batch, and the map from a view back to the ground grid.

:func:`make_views` returns copies of a batch's model inputs (the same dict format) under a
random per-window **geometric** transform (one of the 8 symmetries of the square: an optional
left-right flip, then ``k`` quarter turns), a **temporal** one (whole dates dropped through
``<m>_valid``; never every valid date of a window) and a **photometric** one (per band gain
and offset jitter and Gaussian noise on valid values; invalid values stay 0). The
:class:`View` records what was done, so :func:`align` maps a view's feature map back to the
canonical pixel grid: the same ground pixel at the same position in every view.

All randomness comes from the ``generator`` passed in: the same seed gives the same views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .._coerce import positive_int
from ..exceptions import ArgumentError, DimensionError

__all__ = ["View", "align", "make_views"]

# keys that are not per-pixel model inputs
_DATE_SUFFIXES = ("_doy", "_month")
_PASS_KEYS = ("window",)


@dataclass
class View:
    """The per-window transform of one view.

    A canonical array ``x`` becomes ``rot90(flip(x) if flip else x, k)`` on its last two
    (square) axes: ``flip`` mirrors the last axis (left-right), ``k`` counts quarter turns
    (``torch.rot90`` direction).

    Attributes
    ----------
    flip
        ``(B,)`` bool.
    k
        ``(B,)`` int64 in 0..3.
    dropped
        ``{modality: (B, T) bool}``: the dates each window had valid and lost in this view.
    """

    flip: torch.Tensor
    k: torch.Tensor
    dropped: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def identity(cls, batch_size: int) -> View:
        """The view that changes nothing."""
        return cls(torch.zeros(batch_size, dtype=torch.bool),
                   torch.zeros(batch_size, dtype=torch.int64))

    @property
    def batch_size(self) -> int:
        return int(self.flip.shape[0])

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """Canonical -> view: transform the last two axes of each sample of ``t``."""
        return _transform(t, self, inverse=False)

    def invert(self, t: torch.Tensor) -> torch.Tensor:
        """View -> canonical (the inverse of :meth:`apply`)."""
        return _transform(t, self, inverse=True)


def align(t: torch.Tensor, view: View) -> torch.Tensor:
    """Map a view's ``(B, D, W, W)`` or ``(B, W, W)`` tensor back to the canonical grid.

    Differentiable (a permutation of entries). ``align(view.apply(x), view)`` is ``x``.
    """
    if t.ndim not in (3, 4):
        raise DimensionError(f"align takes (B, D, W, W) or (B, W, W), got {tuple(t.shape)}")
    return view.invert(t)


def _transform(t: torch.Tensor, view: View, *, inverse: bool) -> torch.Tensor:
    if t.ndim < 3 or t.shape[-1] != t.shape[-2]:
        raise DimensionError(f"a view transforms square (..., W, W) maps, got {tuple(t.shape)}")
    if t.shape[0] != view.batch_size:
        raise DimensionError(f"tensor has {t.shape[0]} samples, the view {view.batch_size}")
    code = view.flip.to(torch.int64).cpu() * 4 + view.k.to(torch.int64).cpu() % 4
    if bool((code == 0).all()):
        return t
    parts, order = [], []
    for c in torch.unique(code).tolist():
        idx = (code == c).nonzero().squeeze(1)
        flip, k = c >= 4, c % 4
        y = t[idx.to(t.device)]
        if inverse:
            y = torch.rot90(y, -k, dims=(-2, -1))
            y = y.flip(-1) if flip else y
        else:
            y = y.flip(-1) if flip else y
            y = torch.rot90(y, k, dims=(-2, -1))
        parts.append(y)
        order.append(idx)
    perm = torch.cat(order)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return torch.cat(parts)[inv.to(t.device)]


def _modalities(batch: Mapping[str, Any]) -> list[str]:
    """Names of the modality inputs: every tensor key that is not a mask, date or extra."""
    out = []
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or key in ("latlon", *_PASS_KEYS):
            continue
        if key.endswith(("_valid", *_DATE_SUFFIXES)):
            continue
        out.append(key)
    return sorted(out)


def _rand(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor,
          normal: bool = False) -> torch.Tensor:
    draw = torch.randn if normal else torch.rand
    x = draw(shape, generator=generator, device=generator.device)
    return x.to(device=like.device, dtype=like.dtype if like.is_floating_point() else x.dtype)


def _check_rate(value: Any, name: str, upper: float = 1.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be a number, got {value!r}") from None
    if not 0.0 <= v <= upper:
        raise ArgumentError(f"{name} must be in [0, {upper}], got {value!r}")
    return v


def make_views(batch: Mapping[str, Any], n_views: int = 2, *, generator: torch.Generator,
               date_dropout: float = 0.25, noise: float = 0.05, jitter: float = 0.1,
               flips: bool = True, rotations: bool = True
               ) -> list[tuple[dict[str, Any], View]]:
    """Random augmented copies of a batch's model inputs.

    Parameters
    ----------
    batch
        A training batch (``"<m>"``, ``"<m>_valid"``, ``"<m>_doy"``, ..., ``"latlon"``,
        ``"window"``); see :class:`~xsky.train.sampler.WindowSampler`.
    n_views
        Number of views.
    generator
        Source of every random draw (flip, turns, dropped dates, jitter, noise, in that order
        per view; modalities in sorted order).
    date_dropout
        Probability of dropping each valid date of each window (per modality with a time
        axis); when every valid date of a window would go, one of them (drawn) is kept.
    noise
        Standard deviation of Gaussian noise added to valid values (normalised units).
    jitter
        Standard deviation of a per (window, band) gain ``1 + jitter * N(0, 1)`` and offset
        ``jitter * N(0, 1)`` applied to valid values.
    flips, rotations
        Draw a left-right flip / a number of quarter turns per window.

    Returns
    -------
    list of (dict, View)
        The view's inputs (spatial tensors transformed, dropped dates invalid and 0; date,
        ``latlon`` and ``window`` entries shared with ``batch``; a per-pixel ``latlon`` of
        shape ``(B, 2, W, W)`` is transformed too) and its :class:`View`.
    """
    n_views = positive_int(n_views, "n_views")
    date_dropout = _check_rate(date_dropout, "date_dropout")
    noise = _check_rate(noise, "noise", float("inf"))
    jitter = _check_rate(jitter, "jitter", float("inf"))
    if not isinstance(generator, torch.Generator):
        raise ArgumentError(f"generator must be a torch.Generator (seeded by the loop), got "
                            f"{type(generator).__name__}")
    mods = _modalities(batch)
    if not mods:
        raise ArgumentError(f"the batch has no modality input (keys {sorted(batch)})")
    b = int(batch[mods[0]].shape[0])
    views = []
    for _ in range(n_views):
        flip = (torch.rand(b, generator=generator, device=generator.device) < 0.5).cpu()
        if not flips:
            flip = torch.zeros(b, dtype=torch.bool)
        k = torch.randint(0, 4, (b,), generator=generator, device=generator.device).cpu()
        if not rotations:
            k = torch.zeros(b, dtype=torch.int64)
        view = View(flip, k)
        out: dict[str, Any] = dict(batch)
        for m in mods:
            x = batch[m]
            valid = batch.get(f"{m}_valid")
            band_valid = batch.get(f"{m}_band_valid")
            if valid is not None and valid.ndim == 4 and x.ndim == 5 and date_dropout > 0:
                drop = _drop_dates(valid, date_dropout, generator)
                view.dropped[m] = drop
                keep = ~drop[:, :, None, None]
                valid = valid & keep
                x = x * keep[:, None].to(x.dtype)
                if band_valid is not None:
                    band_valid = band_valid & keep[:, None]
            if jitter > 0:
                shape = (b, x.shape[1]) + (1,) * (x.ndim - 2)
                gain = 1 + jitter * _rand(shape, generator, x, normal=True)
                offset = jitter * _rand(shape, generator, x, normal=True)
                x = x * gain + offset
            if noise > 0:
                x = x + noise * _rand(tuple(x.shape), generator, x, normal=True)
            if jitter > 0 or noise > 0:
                mask = _value_mask(x, valid, band_valid)
                if mask is not None:
                    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
            out[m] = view.apply(x)
            if valid is not None:
                out[f"{m}_valid"] = view.apply(valid)
            if band_valid is not None:
                out[f"{m}_band_valid"] = view.apply(band_valid)
        latlon = batch.get("latlon")
        if isinstance(latlon, torch.Tensor) and latlon.ndim == 4:
            out["latlon"] = view.apply(latlon)
        views.append((out, view))
    return views


def _value_mask(x: torch.Tensor, valid: torch.Tensor | None,
                band_valid: torch.Tensor | None) -> torch.Tensor | None:
    """Where values are valid, broadcastable to ``x`` (None: everywhere)."""
    if band_valid is not None:
        return band_valid.bool()
    if valid is None:
        return None
    v = valid.bool()
    return v[:, None] if v.ndim == x.ndim - 1 else v


def _drop_dates(valid: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """(B, T) dates to drop: valid ones with probability ``rate``, at least one kept."""
    present = valid.flatten(2).any(2).cpu()  # (B, T): the date has a valid pixel
    u = torch.rand(present.shape, generator=generator, device=generator.device).cpu()
    drop = present & (u < rate)
    lost = present.any(1) & ~(present & ~drop).any(1)
    # the date kept where all went: the present date with the largest of fresh draws
    pick = torch.rand(present.shape, generator=generator, device=generator.device).cpu()
    pick = torch.where(present, pick, torch.full_like(pick, -1.0)).argmax(1)
    restore = torch.zeros_like(drop)
    restore[torch.arange(drop.shape[0]), pick] = True
    drop = drop & ~(restore & lost[:, None])
    return drop.to(valid.device)
