"""``presto``: the Presto pixel time-series encoder (Tseng et al. 2023), faithful to the
official code.

Presto embeds the time series of one pixel: Sentinel-1, Sentinel-2 (in band groups), ERA5
weather, SRTM topography, NDVI and Dynamic World land cover, plus the pixel's location, as
one token per band group and date. Masked tokens are dropped, a 2-block transformer mixes
the rest, and the pooled embedding is ``LayerNorm(mean of the unmasked output tokens)``.

This module is an independent re-implementation of the official encoder
(``nasaharvest/presto``, ``presto/presto.py::Encoder`` at commit
``13173d028f035abcbcc3b13829314323a5c15d02``) and of its input pipeline
(``S1_S2_ERA5_SRTM.normalize`` and ``construct_single_presto_input``). It is checked against
the official outputs in ``shared/conformance/presto``.

* :func:`normalize` and :func:`construct_presto_input`: the official normalisation and per-band
  mask, from user units (S1 dB, S2 DN, ERA5 K and m, SRTM m and degrees).
* :class:`PrestoEncoder`: ``encoder(x, dynamic_world, latlons, mask=None, month=0,
  eval_task=True)`` with the official tensors; the pooled ``(B, 128)`` embedding, or the
  tokens, the official index map and the token mask.
* :class:`Presto`: the engine model (registered as ``"presto"``): per-pixel embeddings of a
  window of pixel time series; :meth:`Presto.from_official` loads ``default_model.pt``.

Examples
--------
>>> import numpy as np
>>> from xsky.models.presto import normalize
>>> raw = np.zeros((1, 2, 18))          # (B, T, 18 raw bands): VV, VH, B2 ... NDVI
>>> raw[..., 0] = -12.5                 # VV in dB
>>> normalize(raw)[0, 0, :2]            # (dB + 25) / 25; VH = 0 dB gives 1.0
array([0.5, 1. ], dtype=float32)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast, overload

import numpy as np
import torch
from torch import nn

from ..exceptions import ArgumentError, BandMismatchError, CheckpointError, DataError, ModelError
from ._base import EmbeddingModel
from ._checkpoint import LoadReport, apply_state, load_checkpoint, unwrap_state
from ._registry import register_model
from ._vit_timm import Block
from .card import ModelCard, WeightFile
from .spec import ModalitySpec, ModelSpec

__all__ = [
    "ADD_BY",
    "BANDS",
    "BAND_GROUPS",
    "CARD",
    "DIVIDE_BY",
    "DW_MISSING",
    "NORMED_BANDS",
    "OFFICIAL_COMMIT",
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256",
    "Presto",
    "PrestoEncoder",
    "checkpoint_filter_fn",
    "construct_presto_input",
    "month_to_tensor",
    "normalize",
    "presto_spec",
]

# ------------------------------------------------------------------------------ tables

#: The official repository commit this implementation follows (and the weights come from).
OFFICIAL_COMMIT = "13173d028f035abcbcc3b13829314323a5c15d02"
#: The official weights file and its sha256.
WEIGHTS_FILE = "default_model.pt"
WEIGHTS_SHA256 = "559c9d76f525bdf2dd3774da8b1e7f1510769b73baacac12e9e4d8d5c67fbe65"
_WEIGHTS_URL = (f"https://raw.githubusercontent.com/nasaharvest/presto/{OFFICIAL_COMMIT}/data/"
                f"{WEIGHTS_FILE}")

#: The 18 raw channels of the official arrays (``BANDS``), in user units: S1 dB, S2 DN,
#: temperature K, precipitation m, elevation m, slope degrees, and an NDVI slot.
BANDS: tuple[str, ...] = (
    "VV", "VH", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12",
    "temperature_2m", "total_precipitation", "elevation", "slope", "NDVI",
)
#: The 17 channels the encoder takes (``NORMED_BANDS``: ``BANDS`` without B9).
NORMED_BANDS: tuple[str, ...] = tuple(b for b in BANDS if b != "B9")
#: ``x_norm = (x + ADD_BY) / DIVIDE_BY`` on the 18 raw channels.
ADD_BY: tuple[float, ...] = (25.0, 25.0) + (0.0,) * 11 + (-272.15, 0.0, 0.0, 0.0, 0.0)
DIVIDE_BY: tuple[float, ...] = (25.0, 25.0) + (1e4,) * 11 + (35.0, 0.03, 2000.0, 50.0, 1.0)
#: Channel groups (indices into :data:`NORMED_BANDS`), in the official token order.
BAND_GROUPS: dict[str, tuple[int, ...]] = {
    "S1": (0, 1),
    "S2_RGB": (2, 3, 4),
    "S2_Red_Edge": (5, 6, 7),
    "S2_NIR_10m": (8,),
    "S2_NIR_20m": (9,),
    "S2_SWIR": (10, 11),
    "ERA5": (12, 13),
    "SRTM": (14, 15),
    "NDVI": (16,),
}
#: The Dynamic World class meaning "missing" (classes 0..8 are land cover).
DW_MISSING = 9
_DW_CLASSES = 9
_NDVI = NORMED_BANDS.index("NDVI")
_B4, _B8 = NORMED_BANDS.index("B4"), NORMED_BANDS.index("B8")
_KEEP = tuple(i for i, b in enumerate(BANDS) if b != "B9")

# the official input groups of construct_single_presto_input (B1 and B10 are not used)
_S2_OFFICIAL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11",
                "B12")
_INPUT_BANDS: dict[str, tuple[str, ...]] = {
    "s1": ("VV", "VH"),
    "s2": _S2_OFFICIAL,
    "era5": ("temperature_2m", "total_precipitation"),
    "srtm": ("elevation", "slope"),
}
_REMOVED = ("B1", "B10")

# the engine modalities: xsky's canonical band names -> raw channel index
_S2_XSKY = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
_MODALITY_BANDS: dict[str, tuple[str, ...]] = {
    "s2": _S2_XSKY,
    "s1": ("VV", "VH"),
    "era5": ("temperature_2m", "total_precipitation"),
    "srtm": ("elevation", "slope"),
    "dw": ("dynamic_world",),
}
_TIMED = ("s2", "s1", "era5", "dw")


def _official_band(name: str) -> str:
    """``"B02"`` -> ``"B2"`` (xsky's canonical Sentinel-2 names to the official ones)."""
    if len(name) == 3 and name[0] in "Bb" and name[1] == "0" and name[2].isdigit():
        return "B" + name[2]
    return name.upper() if name.lower() in ("vv", "vh", "b8a") else name


_RAW_INDEX = {b: i for i, b in enumerate(BANDS)}
_S2_RAW = tuple(_RAW_INDEX[_official_band(b)] for b in _S2_XSKY)


# ------------------------------------------------------------------------ normalisation


@overload
def normalize(x: np.ndarray) -> np.ndarray: ...
@overload
def normalize(x: torch.Tensor) -> torch.Tensor: ...


def normalize(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The official normalisation (``S1_S2_ERA5_SRTM.normalize``), from user units.

    ``(x + ADD_BY) / DIVIDE_BY`` on the 18 raw channels (:data:`BANDS`), computed in float64
    and cast to float32; B9 is dropped; NDVI is then recomputed from the normalised B8 and B4
    as ``(B8 - B4) / (B8 + B4)`` where ``B8 + B4 > 0``, else 0. So S1 becomes
    ``(dB + 25) / 25``, S2 ``DN / 1e4``, temperature ``(K - 272.15) / 35``, precipitation
    ``m / 0.03``, elevation ``m / 2000`` and slope ``degrees / 50``.

    Parameters
    ----------
    x
        ``(..., 18)`` array or tensor in :data:`BANDS` order and user units (the stored NDVI
        channel is ignored).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(..., 17)`` float32 in :data:`NORMED_BANDS` order, of the input's kind.

    Raises
    ------
    ArgumentError
        The last axis does not have 18 channels.
    """
    is_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.asarray(x)) if is_numpy else cast(torch.Tensor, x)
    if not isinstance(t, torch.Tensor) or t.ndim < 1 or t.shape[-1] != len(BANDS):
        shape = tuple(getattr(x, "shape", ()))
        raise ArgumentError(
            f"normalize needs (..., {len(BANDS)}) raw channels in the order {BANDS}, got shape "
            f"{shape}; build it with construct_presto_input for a subset of the bands"
        )
    add = torch.tensor(ADD_BY, dtype=torch.float64, device=t.device)
    div = torch.tensor(DIVIDE_BY, dtype=torch.float64, device=t.device)
    out = ((t.to(torch.float64) + add) / div).to(torch.float32)[..., list(_KEEP)]
    b8, b4 = out[..., _B8], out[..., _B4]
    total = b8 + b4
    out[..., _NDVI] = torch.where(total > 0, (b8 - b4) / total, torch.zeros_like(total))
    return out.numpy() if is_numpy else out


_normalize = normalize


def construct_presto_input(
    s1: Any = None, s1_bands: Sequence[str] | None = None,
    s2: Any = None, s2_bands: Sequence[str] | None = None,
    era5: Any = None, era5_bands: Sequence[str] | None = None,
    srtm: Any = None, srtm_bands: Sequence[str] | None = None,
    dynamic_world: Any = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoder inputs from any subset of the bands (official ``construct_single_presto_input``,
    batched).

    Bands not given are 0 before normalisation and masked (1); NDVI is unmasked when both B4
    and B8 are given; Dynamic World defaults to :data:`DW_MISSING` (9) everywhere.

    Parameters
    ----------
    s1, s2, era5, srtm
        ``(..., T, len(<x>_bands))`` arrays or tensors in user units (S1 dB, S2 DN, ERA5 K
        and m, SRTM m and degrees).
    s1_bands, s2_bands, era5_bands, srtm_bands
        The band names of each input: official names (``"B2"``, ``"B8A"``) or xsky's
        canonical ones (``"B02"``). S2 ``B1`` and ``B10`` are accepted and not used.
    dynamic_world
        ``(..., T)`` Dynamic World classes (0..8, 9 = missing), or ``None``.
    normalize
        Apply :func:`normalize` (the official default).

    Returns
    -------
    x, mask, dynamic_world
        ``(..., T, 17)`` float32 inputs, ``(..., T, 17)`` float32 mask (1 = masked) and
        ``(..., T)`` int64 Dynamic World classes.

    Raises
    ------
    ArgumentError
        No input, an unknown band, bands without names, or inputs of different shapes.
    """
    given = {"s1": (s1, s1_bands), "s2": (s2, s2_bands), "era5": (era5, era5_bands),
             "srtm": (srtm, srtm_bands)}
    arrays: dict[str, tuple[torch.Tensor, list[str]]] = {}
    for group, (data, names) in given.items():
        if data is None:
            continue
        if names is None:
            raise ArgumentError(f"construct_presto_input: {group} is given without "
                                f"{group}_bands; name its bands (from {_INPUT_BANDS[group]})")
        t = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
        official = [_official_band(str(b)) for b in names]
        unknown = [b for b, o in zip(names, official, strict=True)
                   if o not in _INPUT_BANDS[group]]
        if unknown:
            raise ArgumentError(f"construct_presto_input: unknown {group} band(s) {unknown}; "
                                f"Presto's {group} bands are {_INPUT_BANDS[group]}")
        if t.ndim < 2 or t.shape[-1] != len(official):
            raise ArgumentError(
                f"construct_presto_input: {group} has shape {tuple(t.shape)} but "
                f"{len(official)} band names; give (..., T, {len(official)})")
        arrays[group] = (t, official)
    lead = [tuple(t.shape[:-1]) for t, _ in arrays.values()]
    dw = None
    if dynamic_world is not None:
        dw = torch.as_tensor(np.asarray(dynamic_world) if not isinstance(
            dynamic_world, torch.Tensor) else dynamic_world)
        lead.append(tuple(dw.shape))
    if not lead:
        raise ArgumentError("construct_presto_input needs at least one of s1, s2, era5, srtm "
                            "or dynamic_world")
    if any(s != lead[0] for s in lead):
        raise ArgumentError(f"construct_presto_input: the inputs have different (..., T) shapes "
                            f"{lead}; give every input the same batch and time axes")
    shape = lead[0]
    x = torch.zeros((*shape, len(BANDS)), dtype=torch.float32)
    mask = torch.ones((*shape, len(BANDS)), dtype=torch.float32)
    for t, official in arrays.values():
        for i, b in enumerate(official):
            if b in _REMOVED:
                continue
            x[..., _RAW_INDEX[b]] = t[..., i].to(torch.float32)
            mask[..., _RAW_INDEX[b]] = 0
    if dw is None:
        dw = torch.full(shape, DW_MISSING, dtype=torch.int64)
    mask = mask[..., list(_KEEP)]
    if normalize:
        x = _normalize(x)
        s2_names = arrays["s2"][1] if "s2" in arrays else []
        if "B8" in s2_names and "B4" in s2_names:
            mask[..., _NDVI] = 0
    else:
        x = x[..., list(_KEEP)]
    return x, mask, dw.to(torch.int64)


# ------------------------------------------------------------------------------ encoder


def _sinusoid_table(positions: int, dim: int, base: float = 1000.0) -> torch.Tensor:
    """Interleaved sin/cos table: ``sin`` (even d) / ``cos`` (odd d) of ``t / base^(2(d//2)/dim)``."""
    t = torch.arange(positions, dtype=torch.float64)[:, None]
    d = torch.arange(dim)
    angle = t / torch.pow(torch.tensor(base, dtype=torch.float64), 2 * (d // 2) / dim)
    return torch.where(d % 2 == 0, torch.sin(angle), torch.cos(angle)).to(torch.float32)


def _month_table(dim: int) -> torch.Tensor:
    """``[sin(2 pi m / 12)] x dim/2 ++ [cos(2 pi m / 12)] x dim/2`` for months 0..11."""
    angle = torch.arange(12, dtype=torch.float64)[:, None] / (12 / (2 * math.pi))
    half = dim // 2
    return torch.cat([torch.sin(angle).expand(12, half), torch.cos(angle).expand(12, half)],
                     dim=1).to(torch.float32)


def month_to_tensor(month: int | torch.Tensor, batch_size: int, seq_len: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The official month argument as a ``(B, T)`` int64 tensor of months 0..11.

    An int ``m`` gives month ``(m + t) % 12`` at step ``t``; a ``(B,)`` tensor a start month
    per sample; a ``(B, T)`` tensor is used as it is.

    Raises
    ------
    ArgumentError
        Months outside 0..11, or a tensor of another shape.
    """
    if isinstance(month, torch.Tensor) and month.ndim == 0:
        month = int(month.item())
    if isinstance(month, (int, np.integer)) and not isinstance(month, bool):
        m = int(month)
        if not 0 <= m < 12:
            raise ArgumentError(f"month must be in 0..11 (0 = January), got {m}")
        return (torch.arange(m, m + seq_len, device=device) % 12).expand(batch_size, seq_len)
    if not isinstance(month, torch.Tensor):
        month = torch.as_tensor(np.asarray(month))
    month = month.to(device=device, dtype=torch.int64)
    if month.numel() and (int(month.min()) < 0 or int(month.max()) >= 12):
        raise ArgumentError(f"months must be in 0..11 (0 = January), got values in "
                            f"[{int(month.min())}, {int(month.max())}]")
    if month.shape == (batch_size,):
        return (month[:, None] + torch.arange(seq_len, device=month.device)) % 12
    if month.shape == (batch_size, seq_len):
        return month
    raise ArgumentError(f"month must be an int, a ({batch_size},) or a ({batch_size}, "
                        f"{seq_len}) tensor, got shape {tuple(month.shape)}")


class PrestoEncoder(nn.Module):
    """The Presto encoder with the official tensors (``presto.presto.Encoder``).

    Parameters
    ----------
    embedding_size, channel_embed_ratio, month_embed_ratio, depth, mlp_ratio, num_heads,
    max_sequence_length
        The official sizes (``config/default.json``: 128, 0.25, 0.25, 2, 4, 8, 24).

    Notes
    -----
    Tokens, in order: for each group of :data:`BAND_GROUPS` one token per step (SRTM: one
    token from step 0), then one Dynamic World token per step. A group's token is masked when
    any of its channels is masked at that step; a Dynamic World token when its class is 9
    (``mask`` does not apply to it). Masked tokens are moved to the end of each row with a
    stable sort and the rows are cut to the longest; the latlon token is put first and is
    never masked. Each token gets ``[month (32) | channel (32) | position (64)]`` added
    (SRTM: ``[0 | channel | 0]``; latlon: nothing).
    """

    def __init__(self, embedding_size: int = 128, channel_embed_ratio: float = 0.25,
                 month_embed_ratio: float = 0.25, depth: int = 2, mlp_ratio: float = 4,
                 num_heads: int = 8, max_sequence_length: int = 24) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.max_sequence_length = max_sequence_length
        channel_dim = int(embedding_size * channel_embed_ratio)
        month_dim = int(embedding_size * month_embed_ratio)
        pos_dim = int(embedding_size * (1 - (channel_embed_ratio + month_embed_ratio)))
        self.eo_patch_embed = nn.ModuleDict(
            {g: nn.Linear(len(idx), embedding_size) for g, idx in BAND_GROUPS.items()})
        self.dw_embed = nn.Embedding(_DW_CLASSES + 1, embedding_size)
        self.latlon_embed = nn.Linear(3, embedding_size)
        self.blocks = nn.ModuleList(
            [Block(embedding_size, num_heads, mlp_ratio, eps=1e-5) for _ in range(depth)])
        self.norm = nn.LayerNorm(embedding_size)
        self.pos_embed = nn.Parameter(_sinusoid_table(max_sequence_length, pos_dim)[None],
                                      requires_grad=False)
        self.month_embed = nn.Embedding.from_pretrained(_month_table(month_dim), freeze=True)
        self.channel_embed = nn.Embedding(len(BAND_GROUPS) + 1, channel_dim)
        self._group_index = {g: i for i, g in enumerate(BAND_GROUPS)}
        self._group_index["dynamic_world"] = len(BAND_GROUPS)

    @staticmethod
    def cartesian(latlons: torch.Tensor) -> torch.Tensor:
        """``(B, 2)`` (lat, lon) in degrees -> ``(B, 3)`` unit vectors (x, y, z)."""
        rad = latlons * math.pi / 180
        lat, lon = rad[:, 0], rad[:, 1]
        return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon),
                            torch.sin(lat)], dim=-1)

    @staticmethod
    def mask_tokens(x: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move unmasked tokens to the front of each row (stable), cut to the longest row.

        Returns the compacted tokens (padding zeroed), the sort indices (the official index
        map, before the latlon shift) and the padded mask (1 = padding).
        """
        keep = (~mask.bool()).to(torch.int32)
        sorted_keep, indices = torch.sort(keep, dim=1, descending=True, stable=True)
        x = x.gather(1, indices[:, :, None].expand_as(x))
        x = x * sorted_keep[:, :, None].to(x.dtype)
        length = int(sorted_keep.sum(-1).max())
        return x[:, :length], indices, 1 - sorted_keep[:, :length]

    def forward(self, x: torch.Tensor, dynamic_world: torch.Tensor, latlons: torch.Tensor,
                mask: torch.Tensor | None = None, month: int | torch.Tensor = 0,
                eval_task: bool = True) -> Any:
        """The official ``Encoder.forward``.

        Parameters
        ----------
        x
            ``(B, T, 17)`` normalised inputs in :data:`NORMED_BANDS` order (:func:`normalize`).
        dynamic_world
            ``(B, T)`` int classes 0..8, 9 = missing.
        latlons
            ``(B, 2)`` (lat, lon) in degrees.
        mask
            ``(B, T, 17)``, 1 = masked, or ``None`` (nothing masked).
        month
            An int (month of step 0; 0 = January), a ``(B,)`` or a ``(B, T)`` tensor.
        eval_task
            Return the pooled embedding (the official downstream features).

        Returns
        -------
        torch.Tensor or tuple
            ``(B, 128)`` pooled; with ``eval_task=False`` ``(tokens, orig_indices,
            token_mask)``: ``(B, L, 128)`` normed tokens (latlon first), ``(B, 1 + n)``
            int64 positions of each token in the expanded layout, ``(B, L)`` float mask
            (1 = padding).
        """
        dtype = self.norm.weight.dtype
        if x.ndim != 3 or x.shape[-1] != len(NORMED_BANDS):
            raise ArgumentError(f"x must be (B, T, {len(NORMED_BANDS)}) normalised inputs in "
                                f"NORMED_BANDS order, got shape {tuple(x.shape)}; see "
                                "xsky.models.presto.normalize")
        b, t, _ = x.shape
        if t > self.max_sequence_length:
            raise ArgumentError(
                f"Presto takes at most {self.max_sequence_length} timesteps, got {t}; "
                "composite the series first (xsky.composite(obj, freq='MS'))")
        if tuple(dynamic_world.shape) != (b, t):
            raise ArgumentError(f"dynamic_world must be ({b}, {t}), got "
                                f"{tuple(dynamic_world.shape)}")
        if tuple(latlons.shape) != (b, 2):
            raise ArgumentError(f"latlons must be ({b}, 2) (lat, lon), got "
                                f"{tuple(latlons.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape):
            raise ArgumentError(f"mask must have the shape of x {tuple(x.shape)}, got "
                                f"{tuple(mask.shape)}")
        device = x.device
        x = x.to(dtype)
        if mask is None:
            mask = torch.zeros_like(x)
        months = month_to_tensor(month, b, t, device=device)
        month_emb = self.month_embed(months)
        pos_emb = self.pos_embed[:, :t].expand(b, t, -1)
        tokens, masks = [], []
        for group, idx in BAND_GROUPS.items():
            tok = self.eo_patch_embed[group](x[:, :, list(idx)])
            chan = self.channel_embed.weight[self._group_index[group]].expand(b, t, -1)
            if group == "SRTM":
                emb = torch.cat((torch.zeros_like(month_emb[:, :1]), chan[:, :1],
                                 torch.zeros_like(pos_emb[:, :1])), dim=-1)
                steps = slice(0, 1)
            else:
                emb = torch.cat((month_emb, chan, pos_emb), dim=-1)
                steps = slice(None)
            tokens.append(tok[:, steps] + emb)
            masks.append(mask[:, steps][:, :, list(idx)].amax(dim=-1).to(dtype))
        dw = dynamic_world.to(device=device, dtype=torch.int64)
        chan = self.channel_embed.weight[self._group_index["dynamic_world"]].expand(b, t, -1)
        tokens.append(self.dw_embed(dw) + torch.cat((month_emb, chan, pos_emb), dim=-1))
        masks.append((dw == DW_MISSING).to(dtype))

        h, indices, pad = self.mask_tokens(torch.cat(tokens, dim=1), torch.cat(masks, dim=1))
        latlon = self.latlon_embed(self.cartesian(latlons.to(device=device, dtype=dtype)))
        h = torch.cat((latlon[:, None], h), dim=1)
        pad = torch.cat((pad.new_zeros((b, 1)), pad), dim=1).to(dtype)
        orig_indices = torch.cat((torch.zeros_like(indices[:, :1]), indices + 1), dim=1)
        keep = pad == 0
        for blk in self.blocks:
            h = blk(h, keep)
        if eval_task:
            w = (1 - pad)[:, :, None]
            return self.norm((h * w).sum(dim=1) / w.sum(dim=1))
        return self.norm(h), orig_indices, pad


# ------------------------------------------------------------------------ checkpoints


def checkpoint_filter_fn(obj: Any, model: Any = None) -> dict[str, Any]:
    """The official ``default_model.pt`` state dict, keyed like :class:`Presto`.

    The official file holds ``encoder.*`` and ``decoder.*`` (the pretraining decoder); keys
    are kept as they are (the decoder keys are reported as skipped by
    :meth:`Presto.load_official`). A file that holds only the encoder's own keys (without
    the ``encoder.`` prefix) is accepted too.
    """
    state = unwrap_state(obj, None, source="the Presto weights file")
    if not any(str(k).startswith("encoder.") for k in state) and "norm.weight" in state:
        state = {f"encoder.{k}": v for k, v in state.items()}
    return state


# ------------------------------------------------------------------- spec and card

_PAPER = ("Tseng, G., Cartuyvels, R., Zvonkov, I., Purohit, M., Rolnick, D. and Kerner, H. "
          "(2023). Lightweight, Pre-trained Transformers for Remote Sensing Timeseries. "
          "arXiv:2304.14065")
_DESCRIPTION = ("Presto: a lightweight pretrained transformer (2 blocks, 128-d, 0.4 M "
                "encoder parameters) over the time series of one pixel: Sentinel-1 VV/VH, "
                "Sentinel-2 band groups, ERA5 temperature and precipitation, SRTM elevation "
                "and slope, NDVI and Dynamic World, plus the pixel's location; up to 24 "
                "(monthly) steps. One 128-d embedding per pixel (the official pooled output)")
#: Pixel series per encoder forward pass. The encoder is matmul-bound (about 90 MFLOP per
#: 12-step pixel series with every group present); on 2 CPU cores 256..1024 series per pass
#: ran at the same speed and 2048 slower, and 512 keeps the activations near 120 MB.
PIXEL_BATCH = 512
#: Pixel series per engine call (``default_batch_size`` = this // window**2 windows).
PIXELS_PER_CALL = 4096


def _modalities() -> tuple[ModalitySpec, ...]:
    # no mean/std: the official normalisation runs inside the model, from these units
    return (
        ModalitySpec("s2", _MODALITY_BANDS["s2"], units="dn", partial=True),
        ModalitySpec("s1", _MODALITY_BANDS["s1"], units="db", partial=True),
        ModalitySpec("era5", _MODALITY_BANDS["era5"], units="native", partial=True),
        ModalitySpec("srtm", _MODALITY_BANDS["srtm"], units="native", partial=True),
        ModalitySpec("dw", _MODALITY_BANDS["dw"], units="native", partial=True),
    )


def _check_window(window: Any) -> int:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ArgumentError(f"Presto window must be a positive integer (pixels per side), got "
                            f"{window!r}; e.g. window=16")
    return window


def presto_spec(window: int = 16, batch_size: int | None = None, meta: Any = None) -> ModelSpec:
    """The engine spec of ``presto``: per-pixel embeddings (stride 1) of windows of
    ``window x window`` pixel series; ``batch_size`` windows per call (default: about
    :data:`PIXELS_PER_CALL` pixels, e.g. 16 windows of 16 x 16)."""
    window = _check_window(window)
    if batch_size is None:
        batch_size = max(1, PIXELS_PER_CALL // (window * window))
    return ModelSpec(name="presto", modalities=_modalities(), window=window, stride=1,
                     feature_dim=128, fuses_time=True, output="dense",
                     default_batch_size=batch_size, required_modalities=(), band_mask=True,
                     location="pixel", max_timesteps=24, shared_time=True,
                     meta=(CARD.metadata() if meta is None else meta))


#: The model card of ``presto``.
CARD = ModelCard.from_spec(
    presto_spec(meta=()),
    description=_DESCRIPTION,
    license="MIT",
    paper=_PAPER,
    family="presto",
    weights=(WeightFile(
        WEIGHTS_FILE, sha256=WEIGHTS_SHA256, url=_WEIGHTS_URL,
        source=f"official nasaharvest/presto repository (MIT), data/{WEIGHTS_FILE} at commit "
               f"{OFFICIAL_COMMIT}"),),
    extra={
        "official_repo": "https://github.com/nasaharvest/presto",
        "official_commit": OFFICIAL_COMMIT,
        "config": "encoder 128-d, depth 2, 8 heads, mlp_ratio 4, channel/month embed ratio "
                  "0.25, max_sequence_length 24 (config/default.json)",
        "normalisation": "official S1_S2_ERA5_SRTM.normalize inside the model: S1 (dB+25)/25, "
                         "S2 DN/1e4, temperature (K-272.15)/35, precipitation m/0.03, "
                         "elevation m/2000, slope deg/50; NDVI from B8, B4",
        "pooling": "LayerNorm(mean of the unmasked tokens, latlon token included)",
    },
)


# ------------------------------------------------------------------------ engine model


class Presto(EmbeddingModel):
    """Presto through the engine: one 128-d embedding per pixel of each window.

    A window ``(N, C, T, W, W)`` of each modality becomes ``N * W * W`` independent pixel
    series; each goes through :class:`PrestoEncoder` (the official pooled output) with its
    own location. Inputs arrive in user units (S2 DN, S1 dB, ERA5 K and m, SRTM m and
    degrees, Dynamic World classes) and are normalised here with :func:`normalize`.

    Parameters
    ----------
    spec
        The engine spec (:func:`presto_spec`).
    pixel_batch
        Pixel series per encoder forward pass.

    Examples
    --------
    >>> from xsky.models.presto import Presto
    >>> model = Presto.from_official("../shared/data/weights_small/presto")  # doctest: +SKIP
    >>> model.encoder(x, dynamic_world=dw, latlons=latlons, month=0)  # doctest: +SKIP
    """

    def __init__(self, spec: ModelSpec | None = None, *, pixel_batch: int = PIXEL_BATCH) -> None:
        super().__init__()
        if not isinstance(pixel_batch, int) or isinstance(pixel_batch, bool) or pixel_batch < 1:
            raise ArgumentError(f"pixel_batch must be a positive integer, got {pixel_batch!r}")
        self.spec = spec or presto_spec()
        self.pixel_batch = pixel_batch
        self.encoder = PrestoEncoder()
        self.load_report: LoadReport | None = None

    # -- official layout -------------------------------------------------------------
    def forward(self, x: torch.Tensor, dynamic_world: torch.Tensor, latlons: torch.Tensor,
                mask: torch.Tensor | None = None, month: int | torch.Tensor = 0,
                eval_task: bool = True) -> Any:
        """:meth:`PrestoEncoder.forward` (the official tensors)."""
        return self.encoder(x, dynamic_world, latlons, mask=mask, month=month,
                            eval_task=eval_task)

    @classmethod
    def from_official(cls, path: str | os.PathLike[str], *, window: int = 16,
                      batch_size: int | None = None, pixel_batch: int = PIXEL_BATCH,
                      strict: bool = True, trust: bool = False,
                      sha256: str | None = WEIGHTS_SHA256) -> Presto:
        """A Presto with the official weights, in eval mode.

        Parameters
        ----------
        path
            ``default_model.pt`` or a folder holding it.
        window, batch_size, pixel_batch
            Engine settings (:func:`presto_spec`).
        strict
            Refuse files with missing or unexpected encoder weights.
        trust
            Allow full unpickling (only for a file you trust).
        sha256
            The expected digest of the file (default: the model card's, the official
            weights); ``None`` skips the check (e.g. for fine-tuned weights of your own).

        Raises
        ------
        CheckpointError
            The file is missing, has another sha256, or does not fit the encoder.
        """
        model = cls(presto_spec(window, batch_size), pixel_batch=pixel_batch)
        model.load_official(path, strict=strict, trust=trust, sha256=sha256)
        return model.eval()

    def load_official(self, path: str | os.PathLike[str], *, strict: bool = True,
                      trust: bool = False, sha256: str | None = WEIGHTS_SHA256) -> LoadReport:
        """Load an official Presto checkpoint (see :meth:`from_official`); the pretraining
        decoder (``decoder.*``) is not built and is reported as ``skipped``."""
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / WEIGHTS_FILE
            if not p.is_file():
                raise CheckpointError(
                    f"folder {str(p.parent)!r} holds no {WEIGHTS_FILE!r}; pass the Presto "
                    f"weights file itself, or the folder that holds {WEIGHTS_FILE}")
        report = LoadReport(source=str(p), what="Presto weights")
        obj = load_checkpoint(p, trust=trust, sha256=sha256)
        state = checkpoint_filter_fn(obj, self)

        def classify(key: str) -> str | None:
            return "skipped" if key.startswith("decoder.") else None

        apply_state(self, state, report=report, strict=strict, classify=classify,
                    fix=("Is it the official Presto default_model.pt (a state dict with "
                         "encoder.* keys)? Pass strict=False to keep the initial values of "
                         "missing weights."))
        self.load_report = report
        return report

    # -- engine ----------------------------------------------------------------------
    def official_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The encoder arguments for every pixel of the windows in ``inputs``.

        Parameters
        ----------
        inputs
            What the engine passes to :meth:`embed_windows`.

        Returns
        -------
        dict
            ``x`` ``(P, T, 17)`` float32 (normalised), ``mask`` ``(P, T, 17)`` float32
            (1 = masked), ``dynamic_world`` ``(P, T)`` int64, ``latlons`` ``(P, 2)`` and
            ``month`` ``(P, T)`` int64, with ``P = N * W * W`` pixels in ``(n, y, x)`` order.
        """
        present = [m for m in _MODALITY_BANDS if m in inputs]
        if not present:
            raise ModelError(f"Presto got none of its modalities {tuple(_MODALITY_BANDS)} "
                             f"(input keys: {sorted(inputs)})")
        first = inputs[present[0]]
        if first.ndim != 5:
            raise ModelError(f"Presto expects (N, C, T, W, W) windows, got {present[0]!r} of "
                             f"shape {tuple(first.shape)}")
        n, w = first.shape[0], first.shape[-1]
        device = first.device
        timed = [m for m in present if m in _TIMED]
        lengths = {m: int(inputs[m].shape[2]) for m in timed}
        t = max(lengths.values()) if lengths else 1
        if any(v != t for v in lengths.values()):
            raise DataError(f"Presto needs one time axis for all modalities, got {lengths} "
                            "dates; composite them onto the same periods "
                            "(xsky.composite(obj, freq='MS'))")
        if t > self.encoder.max_sequence_length:
            raise DataError(f"Presto takes at most {self.encoder.max_sequence_length} "
                            f"timesteps, got {t}; composite the series first "
                            "(xsky.composite(obj, freq='MS'))")
        p = n * w * w

        def pixels(a: torch.Tensor) -> torch.Tensor:  # (N, C, T', W, W) -> (P, T', C)
            return a.permute(0, 3, 4, 2, 1).reshape(p, a.shape[2], a.shape[1])

        raw = torch.zeros((p, t, len(BANDS)), dtype=torch.float64, device=device)
        valid = torch.zeros((p, t, len(BANDS)), dtype=torch.bool, device=device)
        dw = torch.full((p, t), DW_MISSING, dtype=torch.int64, device=device)
        for m in present:
            a = inputs[m]
            if a.ndim != 5 or a.shape[0] != n or a.shape[-2:] != (w, w):
                raise ModelError(f"Presto: {m!r} has shape {tuple(a.shape)}; expected "
                                 f"({n}, C, T, {w}, {w}) like {present[0]!r}")
            nbands = len(_MODALITY_BANDS[m])
            if a.shape[1] != nbands:
                raise BandMismatchError(f"Presto: {m!r} has {a.shape[1]} bands, expected "
                                        f"{nbands} {_MODALITY_BANDS[m]}")
            bv = inputs.get(m + "_band_valid")
            if bv is None:
                v = inputs.get(m + "_valid")
                bv = (torch.ones(a.shape, dtype=torch.bool, device=device) if v is None
                      else v[:, None].expand(a.shape))
            vals = pixels(a).to(torch.float64)
            ok = pixels(bv.to(torch.bool)) & torch.isfinite(vals)
            vals = torch.where(ok, vals, torch.zeros_like(vals))
            if m == "srtm":
                # no time axis: the single SRTM token is read from step 0
                vals, ok = vals[:, :1].expand(p, t, 2), ok[:, :1].expand(p, t, 2)
            if m == "dw":
                dw = self._dw_classes(vals[..., 0], ok[..., 0])
                continue
            idx = {"s2": _S2_RAW, "s1": (0, 1), "era5": (13, 14), "srtm": (15, 16)}[m]
            raw[..., list(idx)] = vals
            valid[..., list(idx)] = ok
        x = normalize(raw)
        mask17 = ~valid[..., list(_KEEP)]
        ndvi_ok = valid[..., _RAW_INDEX["B4"]] & valid[..., _RAW_INDEX["B8"]]
        mask17[..., _NDVI] = ~ndvi_ok
        if "latlon" not in inputs:
            raise ModelError("Presto needs the pixel locations (inputs['latlon'], (N, 2, W, W) "
                             "lat/lon degrees): its spec says location='pixel'")
        ll = inputs["latlon"]
        if ll.shape == (n, 2):
            ll = ll[:, :, None, None].expand(n, 2, w, w)
        if tuple(ll.shape) != (n, 2, w, w):
            raise ModelError(f"Presto: inputs['latlon'] has shape {tuple(ll.shape)}; expected "
                             f"({n}, 2, {w}, {w}) (lat, lon per pixel)")
        latlons = ll.permute(0, 2, 3, 1).reshape(p, 2).to(torch.float32)
        month = self._months(inputs, timed, n, t, device).repeat_interleave(w * w, dim=0)
        return {"x": x, "mask": mask17.to(torch.float32), "dynamic_world": dw,
                "latlons": latlons, "month": month}

    @staticmethod
    def _dw_classes(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        cls_ = torch.round(values)
        bad = ok & ((cls_ != values) | (cls_ < 0) | (cls_ > DW_MISSING))
        if bool(bad.any()):
            got = values[bad][:5].tolist()
            raise DataError(f"Presto: 'dynamic_world' must hold Dynamic World class indices "
                            f"0..8 (9 = missing), got values such as {got}; pass the 'label' "
                            "band, not the class probabilities, and mark missing dates as "
                            "nodata")
        return torch.where(ok, cls_, torch.full_like(cls_, DW_MISSING)).to(torch.int64)

    @staticmethod
    def _months(inputs: Mapping[str, torch.Tensor], timed: Sequence[str], n: int, t: int,
                device: torch.device) -> torch.Tensor:
        found: dict[str, torch.Tensor] = {}
        for m in timed:
            if m + "_month" in inputs:
                found[m] = inputs[m + "_month"].to(device=device, dtype=torch.int64)
            elif m + "_doy" in inputs:  # an engine without months: from a 365-day calendar
                doy = inputs[m + "_doy"].to(device=device, dtype=torch.int64)
                ends = torch.tensor([31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334],
                                    device=device)
                found[m] = torch.bucketize(doy.clamp(1, 365) - 1, ends, right=True)
        if not found:
            return torch.zeros((n, t), dtype=torch.int64, device=device)
        ref_name, ref = next(iter(found.items()))
        for m, months in found.items():
            if tuple(months.shape) != (n, t) or not torch.equal(months, ref):
                raise DataError(f"Presto: {m!r} and {ref_name!r} have different dates; Presto "
                                "has one time axis: composite every modality onto the same "
                                "periods (xsky.composite(obj, freq='MS'))")
        return ref

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-pixel Presto embeddings ``(N, 128, W, W)`` of the windows in ``inputs``.

        Inputs follow the engine contract (values in user units, ``<m>_band_valid``,
        ``<m>_month``, ``latlon`` per pixel); see :meth:`official_inputs`. A band invalid at
        a date masks its group at that date; absent modalities are masked. A pixel without
        any valid input gets the embedding of its location token alone (finite; the engine
        sets such pixels to NaN).
        """
        args = self.official_inputs(inputs)
        first = next(inputs[m] for m in _MODALITY_BANDS if m in inputs)
        n, w = first.shape[0], first.shape[-1]
        p = n * w * w
        out = torch.empty((p, self.encoder.embedding_size), dtype=self.encoder.norm.weight.dtype,
                          device=first.device)
        # pixels with the same number of valid tokens go together: less padding
        tokens = self._token_counts(args["mask"], args["dynamic_world"])
        order = torch.argsort(tokens, stable=True)
        for start in range(0, p, self.pixel_batch):
            sel = order[start:start + self.pixel_batch]
            out[sel] = self.encoder(args["x"][sel], args["dynamic_world"][sel],
                                    args["latlons"][sel], mask=args["mask"][sel],
                                    month=args["month"][sel], eval_task=True)
        return out.reshape(n, w, w, -1).permute(0, 3, 1, 2).contiguous().to(torch.float32)

    @staticmethod
    def _token_counts(mask: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
        count = (dw != DW_MISSING).sum(1)
        for group, idx in BAND_GROUPS.items():
            ok = mask[:, :, list(idx)].amax(-1) == 0
            count = count + (ok[:, 0] if group == "SRTM" else ok.sum(1))
        return count


@register_model("presto", spec=presto_spec(), card=CARD)
def create_presto(weights: str | None = None, *, window: int = 16,
                  batch_size: int | None = None, pixel_batch: int = PIXEL_BATCH,
                  strict: bool = True, trust: bool = False,
                  check_digest: bool = True) -> Presto:
    """Presto (official weights: ``default_model.pt`` or its folder): per-pixel 128-d
    embeddings of pixel time series (S2, S1, ERA5, SRTM, Dynamic World; at most 24 steps).

    Options: ``window`` (pixels per side, default 16), ``batch_size`` (windows per call;
    default about 4096 pixels), ``pixel_batch`` (pixel series per forward pass, 512), ``strict``,
    ``trust`` (full unpickling, only for a file you trust) and ``check_digest`` (``False``
    skips the sha256 check, for fine-tuned weights of your own). Without weights: a
    deterministic random initialisation (not a trained model).
    """
    model = Presto(presto_spec(window, batch_size), pixel_batch=pixel_batch)
    if weights is not None:
        model.load_official(weights, strict=strict, trust=trust,
                            sha256=WEIGHTS_SHA256 if check_digest else None)
    return model
