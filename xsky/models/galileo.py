"""Galileo (Tseng et al. 2025): a multi-modal, multi-scale remote-sensing encoder.

An independent re-implementation of the official encoder (github.com/nasaharvest/galileo,
MIT, checked against commit ``0f0b5b95``), faithful to its numerics:

* **Inputs** are four token families in the official layout: space-time
  ``(B, H, W, T, 13)`` (S1 VV/VH, ten S2 bands, NDVI), space ``(B, H, W, 16)`` (SRTM,
  Dynamic World, WorldCereal), time ``(B, T, 6)`` (ERA5, TerraClimate, VIIRS) and static
  ``(B, 18)`` (LandScan, location, static DW/WC), each with a mask per *band group*
  (1 = not seen). :func:`galileo_inputs` builds them from Sentinel-1/2 arrays in user
  units with the pretraining normalisation.
* **Patch embedding** (``FlexiPatchEmbed``): one 8x8 convolution per group, resampled to
  any patch size ``P`` by the pseudo-inverse of the bicubic (antialiased) resize matrix.
  The mask of a ``P x P`` token is the mask of its top-left pixel.
* **Token encodings**, added after the projection, are four quarters: a learned channel
  (group) embedding, a 1-D sin-cos of the time index, a sin-cos of the month and a 2-D
  sin-cos of the patch position (column first) scaled by ``gsd_ratio = res * P / 10``.
  The official sin-cos uses ``omega_k = 10000 ** (-k / (2 D))``, not the usual
  ``10000 ** (-2 k / D)``; so does this module.
* **Masked tokens are dropped** before attention (sorted to the back, the batch truncated
  to its longest row, a key-padding mask), then scattered back as zeros: after the final
  LayerNorm a masked token equals ``norm.bias``.
* **Pooling**: :meth:`Galileo.average_tokens` (the mean of all seen tokens, the official
  inference embedding) and :meth:`Galileo.average_tokens_per_patch` (per patch: its
  space-time and space tokens with every time and static token).

The registry names ``galileo-nano`` (official weights next to the repository, pinned by
sha256), ``galileo-tiny`` and ``galileo-base`` (official sizes, weights by path) run this
encoder through :func:`xsky.embed` on Sentinel-2 and/or Sentinel-1 cubes.

Examples
--------
>>> import torch
>>> from xsky.models.galileo import Galileo, galileo_inputs
>>> model = Galileo(embedding_size=32, depth=1, num_heads=2).eval()
>>> s2 = 1500 * torch.ones(1, 8, 8, 2, 10)  # (B, H, W, T, band), DN
>>> x = galileo_inputs(s2=s2, months=torch.tensor([[5, 6]]))
>>> with torch.no_grad():
...     out = model(*x, patch_size=4)
>>> tuple(out.s_t_x.shape), tuple(model.average_tokens(*out[:-1]).shape)
((1, 2, 2, 2, 7, 32), (1, 32))
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ArgumentError, CheckpointError, DataError, ModelError, format_choices
from ._base import EmbeddingModel
from ._checkpoint import LoadReport, apply_state, load_checkpoint, unwrap_state
from ._registry import register_model
from ._vit_timm import Block
from .card import ModelCard, WeightFile
from .spec import ModalitySpec, ModelSpec

__all__ = [
    "CARDS",
    "GALILEO_NANO_SHA256",
    "GALILEO_PRESETS",
    "S1_BANDS",
    "S2_BANDS",
    "SPACE_TIME_BANDS",
    "SPACE_TIME_GROUPS",
    "Galileo",
    "GalileoConfig",
    "GalileoEmbedder",
    "GalileoInputs",
    "GalileoTokens",
    "checkpoint_filter_fn",
    "galileo_inputs",
    "normalizer_values",
    "official_files",
    "to_cartesian",
]

# --------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------
OFFICIAL_REPO = "https://github.com/nasaharvest/galileo"
OFFICIAL_COMMIT = "0f0b5b95ac81acef4b74cf4686dc877202f4541b"
#: sha256 of the official nano ``encoder.pt`` (data/models/nano at :data:`OFFICIAL_COMMIT`)
GALILEO_NANO_SHA256 = "eab6acacf527886a508a555bc24efe4b4a2cf91b162e84cd1c4a1807e942180c"
_NANO_CONFIG_SHA256 = "8ec17cb83cb78d987b4b920b9c1c35aa245ec0f80e1abf0c22d6f77d828f431c"
_PAPER = ("Tseng et al. (2025), Galileo: Learning Global & Local Features of Many Remote "
          "Sensing Modalities, arXiv:2502.09356")
ENCODER_FILE = "encoder.pt"
CONFIG_FILE = "config.json"
BASE_GSD = 10  # metres: the resolution Galileo's spatial encoding is expressed against
DEFAULT_MONTH = 5  # the official default month (0 = January) when none is given

# --------------------------------------------------------------------------------------
# Band and group tables (official order)
# --------------------------------------------------------------------------------------
#: Sentinel-2 bands Galileo takes, xsky canonical names, in the official order
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Sentinel-1 bands, in the official order
S1_BANDS = ("VV", "VH")
_OFFICIAL_S2 = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
_S2_ALIASES = {**{b: b for b in S2_BANDS}, **dict(zip(_OFFICIAL_S2, S2_BANDS, strict=True))}
#: channels of ``space_time_x`` (official names)
SPACE_TIME_BANDS = ("VV", "VH", *_OFFICIAL_S2, "NDVI")
#: space-time band groups: name -> (first, last + 1) channel of ``space_time_x``
SPACE_TIME_GROUPS: dict[str, tuple[int, int]] = {
    "S1": (0, 2), "S2_RGB": (2, 5), "S2_Red_Edge": (5, 8), "S2_NIR_10m": (8, 9),
    "S2_NIR_20m": (9, 10), "S2_SWIR": (10, 12), "NDVI": (12, 13),
}
SPACE_GROUPS: dict[str, tuple[int, int]] = {"SRTM": (0, 2), "DW": (2, 11), "WC": (11, 16)}
TIME_GROUPS: dict[str, tuple[int, int]] = {"ERA5": (0, 2), "TC": (2, 5), "VIIRS": (5, 6)}
STATIC_GROUPS: dict[str, tuple[int, int]] = {"LS": (0, 1), "location": (1, 4),
                                             "DW_static": (4, 13), "WC_static": (13, 18)}
_N_ST, _N_SP, _N_T, _N_STATIC = 13, 16, 6, 18
_NDVI, _B4, _B8 = 12, 4, 8

# --------------------------------------------------------------------------------------
# Pretraining normalisation
# --------------------------------------------------------------------------------------
# Per-band mean and std of the S1 (dB) and S2 (DN) channels, from the official
# config/normalization.json (key "13"); the pretraining normaliser (train.py,
# "normalization": "std", std_multiplier 2) maps x to (x - (mean - 2 std)) / (4 std).
_ST_MEAN = (-11.728724389184965, -18.85558188024017, 1395.3408730676722, 1338.4026921784578,
            1343.09883810357, 1543.8607982512297, 2186.2022069512263, 2525.0932853316694,
            2410.3377187373408, 2750.2854646886753, 2234.911100061487, 1474.5311266077113)
_ST_STD = (4.887145774840316, 5.730270320384293, 917.7041440370853, 913.2988423581528,
           1092.678723527555, 1047.2206083460424, 1048.0101611156767, 1143.6903026819996,
           1098.979177731649, 1204.472755085893, 1145.9774063078878, 980.2429840007796)
# The other families' shift and div, as the official Normalizer builds them (these groups
# are always masked here, so they only set the values of tokens that are never seen).
# LandScan's are truncated to integers: the official STATIC_SHIFT_VALUES is an int array.
_SPACE_SHIFT = (-1293.1241777089112, -10.40472091071138, *(0.0,) * 14)
_SPACE_DIV = (3932.278919318495, 32.66962715925299, *(1.0,) * 9, *(100.0,) * 5)
_TIME_SHIFT = (111.9509175478781, -0.14784790519146407, -750.6836131024303,
               -1157.8940457005976, -343.7054725750826, -13.46132874826197)
_TIME_DIV = (319.2331576125771, 0.46678188392605946, 2816.0034782230828, 3700.0464505625723,
             1812.9736089114313, 30.052080683331273)
_STATIC_SHIFT = (-2120.0, *(0.0,) * 17)
_STATIC_DIV = (4618.0, *(1.0,) * 12, *(100.0,) * 5)


def normalizer_values() -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """The pretraining normaliser: ``(shift, div)`` per token family, ``x' = (x - shift) / div``.

    S1/S2 channels get ``shift = mean - 2 std`` and ``div = (mean + 2 std) - (mean - 2 std)``
    (computed as the official code does, in float64); NDVI and the location are passed
    through (shift 0, div 1).

    Returns
    -------
    dict
        ``{"space_time": (shift, div), "space": ..., "time": ..., "static": ...}``, each a
        pair of float tuples in the official channel order.
    """
    pairs = list(zip(_ST_MEAN, _ST_STD, strict=True))
    shift = (*(m - 2 * s for m, s in pairs), 0.0)
    div = (*((m + 2 * s) - (m - 2 * s) for m, s in pairs), 1.0)
    return {"space_time": (shift, div), "space": (_SPACE_SHIFT, _SPACE_DIV),
            "time": (_TIME_SHIFT, _TIME_DIV), "static": (_STATIC_SHIFT, _STATIC_DIV)}


_NORMALIZER = normalizer_values()


def _normalise(x: torch.Tensor, family: str) -> torch.Tensor:
    """Official normalisation in float64, cast to float32."""
    shift, div = _NORMALIZER[family]
    s = torch.tensor(shift, dtype=torch.float64, device=x.device)
    d = torch.tensor(div, dtype=torch.float64, device=x.device)
    return ((x.to(torch.float64) - s) / d).to(torch.float32)


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GalileoConfig:
    """Sizes of a Galileo encoder (the ``model.encoder`` part of an official config.json).

    Parameters
    ----------
    embedding_size
        Token width ``D`` (a multiple of 16: four encoding quarters, each sin-cos even).
    depth
        Transformer blocks.
    num_heads
        Attention heads (``D`` must be a multiple).
    mlp_ratio
        MLP hidden width over ``D``.
    max_sequence_length
        Most timesteps (the length of the time position table).
    max_patch_size
        Size of the stored patch kernels; smaller patches are resampled from them.
    """

    embedding_size: int = 128
    depth: int = 4
    num_heads: int = 8
    mlp_ratio: float = 4.0
    max_sequence_length: int = 24
    max_patch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("embedding_size", "depth", "num_heads", "max_sequence_length",
                     "max_patch_size"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
                raise ArgumentError(f"Galileo {name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.embedding_size % 16:
            raise ArgumentError(
                f"Galileo embedding_size must be a multiple of 16 (four encoding quarters, "
                f"each an even sin-cos), got {self.embedding_size}"
            )
        if self.embedding_size % self.num_heads:
            raise ArgumentError(
                f"Galileo embedding_size {self.embedding_size} is not a multiple of num_heads "
                f"{self.num_heads}"
            )
        if not float(self.mlp_ratio) > 0:
            raise ArgumentError(f"Galileo mlp_ratio must be positive, got {self.mlp_ratio!r}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], *, source: str = "config") -> GalileoConfig:
        """Sizes from an official config: the whole ``config.json`` (``model.encoder``), the
        ``model`` or ``encoder`` part, or a flat mapping of the sizes; training-only keys
        (``drop_path``, ``freeze_projections``) are ignored."""
        enc: Any = cfg
        if isinstance(enc, Mapping) and "model" in enc:
            enc = enc["model"]
        if isinstance(enc, Mapping) and "encoder" in enc:
            enc = enc["encoder"]
        if not isinstance(enc, Mapping) or "embedding_size" not in enc:
            raise CheckpointError(
                f"{source} holds no Galileo encoder sizes (expected model.encoder.embedding_size, "
                "depth, num_heads, ... as in the official config.json)"
            )
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in enc.items() if k in names})


#: Official encoder sizes. nano: ``data/models/nano/config.json``; tiny and base:
#: ``config/models/tiny.json`` and ``config/models/base.json`` of github.com/nasaharvest/galileo
#: (the ViT-Tiny and ViT-Base sizes of the paper, arXiv:2502.09356, table of model sizes).
GALILEO_PRESETS: dict[str, GalileoConfig] = {
    "nano": GalileoConfig(128, 4, 8, 4.0, 24, 8),
    "tiny": GalileoConfig(192, 12, 3, 4.0, 24, 8),
    "base": GalileoConfig(768, 12, 12, 4.0, 24, 8),
}
_HEADS_BY_WIDTH = {c.embedding_size: c.num_heads for c in GALILEO_PRESETS.values()}


# --------------------------------------------------------------------------------------
# Encodings
# --------------------------------------------------------------------------------------
def _sincos(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """``[sin(p w_k), cos(p w_k)]`` for ``k < dim / 2``, ``w_k = 10000 ** (-k / (2 dim))``
    (the official frequencies)."""
    k = torch.arange(dim // 2, dtype=pos.dtype, device=pos.device)
    omega = 1.0 / 10000 ** (k / dim / 2.0)
    angle = pos.reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def _month_table(dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[sin(2 pi m / 12)] * dim/2 ++ [cos(2 pi m / 12)] * dim/2`` for months 0..11."""
    angle = torch.arange(12, dtype=torch.float64) / (12 / (2 * math.pi))
    half = dim // 2
    return torch.cat([torch.sin(angle)[:, None].expand(12, half),
                      torch.cos(angle)[:, None].expand(12, half)], dim=1).to(dtype)


def _spatial_encoding(h: int, w: int, gsd_ratio: float, dim: int, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """``(h, w, dim)``: ``[sincos(j r), sincos(i r)]`` for the patch at row i, column j."""
    half = dim // 2
    cols = _sincos(torch.arange(w, dtype=dtype, device=device) * gsd_ratio, half)
    rows = _sincos(torch.arange(h, dtype=dtype, device=device) * gsd_ratio, half)
    return torch.cat([cols[None, :, :].expand(h, w, half),
                      rows[:, None, :].expand(h, w, half)], dim=-1)


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------
def resize_matrix(old: int, new: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(old**2, new**2)``: row ``i`` is the ``old x old`` basis image ``e_i`` resized to
    ``new x new`` (bicubic, antialiased), flattened; ``resize(x) = R.T @ x.ravel()``."""
    basis = torch.eye(old * old, dtype=dtype).reshape(old * old, 1, old, old)
    out = F.interpolate(basis, size=(new, new), mode="bicubic", antialias=True)
    return out.reshape(old * old, new * new)


class _PatchEmbed(nn.Module):
    """FlexiPatchEmbed: a ``base x base`` patch convolution usable at any patch size.

    For another size ``P`` the kernel becomes ``pinv(R) @ w`` (FlexiViT), with ``R`` the
    bicubic resize matrix of :func:`resize_matrix`: the resampled kernel applied to a
    resized patch gives what the base kernel gives on the original one.
    """

    def __init__(self, in_chans: int, embed_dim: int, base: int) -> None:
        super().__init__()
        self.base = base
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=base, stride=base)
        self._pinv: dict[tuple[int, torch.dtype, str], torch.Tensor] = {}

    def kernel(self, patch_size: int) -> torch.Tensor:
        """The ``(D, C, P, P)`` kernel for patch size ``P``."""
        w = self.proj.weight
        if patch_size == self.base:
            return w
        key = (patch_size, w.dtype, str(w.device))
        pinv = self._pinv.get(key)
        if pinv is None:  # computed on the CPU in the model dtype, like the official code
            with torch.inference_mode(False), torch.no_grad():
                pinv = torch.linalg.pinv(resize_matrix(self.base, patch_size, w.dtype))
            pinv = pinv.to(w.device)
            self._pinv[key] = pinv
        o, c = w.shape[:2]
        return (w.reshape(o * c, -1) @ pinv.T).reshape(o, c, patch_size, patch_size)

    def forward(self, x: torch.Tensor, patch_size: int) -> torch.Tensor:
        """``(B, H, W, [T,] C)`` -> ``(B, H/P, W/P, [T,] D)``."""
        if x.ndim == 5:
            b, hh, ww, t, c = x.shape
            x = x.permute(0, 3, 4, 1, 2).reshape(b * t, c, hh, ww)
        else:
            b, t = x.shape[0], 0
            x = x.permute(0, 3, 1, 2)
        y = F.conv2d(x, self.kernel(patch_size), self.proj.bias, stride=patch_size)
        if t:
            return y.reshape(b, t, *y.shape[1:]).permute(0, 3, 4, 1, 2)
        return y.permute(0, 2, 3, 1)


class _Attention(nn.Module):
    """Self-attention with separate ``q``/``k``/``v`` projections (the official keys);
    ``keep`` ``(B, N)`` is the key-padding mask."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                           attn_mask=keep[:, None, None, :])
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


# --------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------
class GalileoTokens(NamedTuple):
    """What :meth:`Galileo.forward` returns (the official order; ``out[:-1]`` is what the
    poolings take). Token arrays are ``(..., D)``; masks are 1 where a token was not seen."""

    s_t_x: torch.Tensor  #: (B, H/P, W/P, T, 7, D)
    sp_x: torch.Tensor  #: (B, H/P, W/P, 3, D)
    t_x: torch.Tensor  #: (B, T, 3, D)
    st_x: torch.Tensor  #: (B, 4, D)
    s_t_m: torch.Tensor  #: (B, H/P, W/P, T, 7)
    sp_m: torch.Tensor  #: (B, H/P, W/P, 3)
    t_m: torch.Tensor  #: (B, T, 3)
    st_m: torch.Tensor  #: (B, 4)
    months: torch.Tensor  #: (B, T)


def _seen(mask: torch.Tensor) -> torch.Tensor:
    return mask == 0


class Galileo(nn.Module):
    """The Galileo encoder, with the official state-dict layout and forward.

    Parameters
    ----------
    config
        Sizes (:class:`GalileoConfig`, or a key of :data:`GALILEO_PRESETS`); by default
        nano. Keyword sizes (``embedding_size=...``) override it.
    **sizes
        Fields of :class:`GalileoConfig`.

    Examples
    --------
    >>> from xsky.models.galileo import Galileo
    >>> Galileo("tiny").config.embedding_size
    192
    """

    pos_embed: torch.Tensor

    def __init__(self, config: GalileoConfig | str | None = None, **sizes: Any) -> None:
        super().__init__()
        if isinstance(config, str):
            if config not in GALILEO_PRESETS:
                raise ArgumentError(f"unknown Galileo size {config!r}; choose one of "
                                    f"{format_choices(GALILEO_PRESETS)}")
            config = GALILEO_PRESETS[config]
        cfg = GalileoConfig(**{**asdict(config or GalileoConfig()), **sizes})
        self.config = cfg
        d, q = cfg.embedding_size, cfg.embedding_size // 4
        self.blocks = nn.ModuleList(
            [Block(d, cfg.num_heads, cfg.mlp_ratio, eps=1e-5, attention=_Attention)
             for _ in range(cfg.depth)])
        self.register_buffer(
            "pos_embed", _sincos(torch.arange(cfg.max_sequence_length, dtype=torch.float32), q))
        self.month_embed = nn.Embedding.from_pretrained(_month_table(q), freeze=True)
        self.s_t_channel_embed = nn.Parameter(torch.zeros(len(SPACE_TIME_GROUPS), q))
        self.sp_channel_embed = nn.Parameter(torch.zeros(len(SPACE_GROUPS), q))
        self.t_channel_embed = nn.Parameter(torch.zeros(len(TIME_GROUPS), q))
        self.st_channel_embed = nn.Parameter(torch.zeros(len(STATIC_GROUPS), q))
        p = cfg.max_patch_size
        self.space_time_embed = nn.ModuleDict(
            {g: _PatchEmbed(b - a, d, p) for g, (a, b) in SPACE_TIME_GROUPS.items()})
        self.space_embed = nn.ModuleDict(
            {g: _PatchEmbed(b - a, d, p) for g, (a, b) in SPACE_GROUPS.items()})
        self.time_embed = nn.ModuleDict(
            {g: nn.Linear(b - a, d) for g, (a, b) in TIME_GROUPS.items()})
        self.static_embed = nn.ModuleDict(
            {g: nn.Linear(b - a, d) for g, (a, b) in STATIC_GROUPS.items()})
        self.norm = nn.LayerNorm(d)
        self.load_report: LoadReport | None = None
        for m in self.modules():  # the official initialisation of linear layers
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    # -- loading ----------------------------------------------------------------------
    @classmethod
    def from_official(cls, path: str | os.PathLike[str], *, trust: bool = False,
                      sha256: str | None = None, num_heads: int | None = None,
                      dtype: torch.dtype | None = None) -> Galileo:
        """Load an official ``encoder.pt`` (sizes from the ``config.json`` beside it).

        Parameters
        ----------
        path
            The ``encoder.pt`` file, or a folder holding ``encoder.pt`` (and
            ``config.json``), e.g. ``data/models/nano`` of the official repository.
        trust
            Allow full unpickling (only for a file you trust; the official file is a plain
            state dict and needs none).
        sha256
            Expected digest of ``encoder.pt`` (:data:`GALILEO_NANO_SHA256` for the official
            nano weights); a file with another digest is refused.
        num_heads
            Attention heads, needed only without a ``config.json`` for a width that is none
            of the official ones (it cannot be read from the weights).
        dtype
            Parameter dtype (e.g. ``torch.float64``); by default the file's (float32).

        Returns
        -------
        Galileo
            In eval mode; ``load_report`` tells what was loaded.

        Raises
        ------
        CheckpointError
            Missing files, a wrong digest, or weights that do not fit the sizes.
        """
        enc, cfg_path = official_files(path)
        cfg: GalileoConfig | None = None
        if cfg_path is not None:
            try:
                raw = json.loads(cfg_path.read_text())
            except (OSError, ValueError) as err:
                raise CheckpointError(
                    f"could not read Galileo config {str(cfg_path)!r}: {err}; pass the official "
                    "config.json, or remove it to infer the sizes from the weights"
                ) from err
            cfg = GalileoConfig.from_mapping(raw, source=f"Galileo config {str(cfg_path)!r}")
            if num_heads is not None and num_heads != cfg.num_heads:
                raise ArgumentError(
                    f"num_heads={num_heads} disagrees with {str(cfg_path)!r} "
                    f"(num_heads={cfg.num_heads}); leave num_heads unset"
                )
        state = checkpoint_filter_fn(load_checkpoint(enc, trust=trust, sha256=sha256))
        if cfg is None:
            cfg = _config_from_state(state, num_heads, str(enc))
        model = cls(cfg)
        model.load_report = apply_state(
            model, state, report=LoadReport(source=str(enc), what="Galileo weights"),
            strict=True,
            fix=("Is it an official Galileo encoder.pt (not decoder.pt or target_encoder.pt)? "
                 "It must hold every encoder weight."),
            shape_fix=("The sizes in config.json (or inferred from the file) do not fit the "
                       "weights; put the config.json that came with encoder.pt beside it."))
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    # -- forward ----------------------------------------------------------------------
    def forward(
        self,
        space_time_x: torch.Tensor,
        space_x: torch.Tensor,
        time_x: torch.Tensor,
        static_x: torch.Tensor,
        space_time_mask: torch.Tensor,
        space_mask: torch.Tensor,
        time_mask: torch.Tensor,
        static_mask: torch.Tensor,
        months: torch.Tensor,
        patch_size: int | None = None,
        input_resolution_m: float = BASE_GSD,
    ) -> GalileoTokens:
        """Encode the four token families (the official ``Encoder.forward``).

        Parameters
        ----------
        space_time_x, space_x, time_x, static_x
            Normalised inputs ``(B, H, W, T, 13)``, ``(B, H, W, 16)``, ``(B, T, 6)``,
            ``(B, 18)`` (:func:`galileo_inputs` builds them).
        space_time_mask, space_mask, time_mask, static_mask
            Per band group, 1 = not seen: ``(B, H, W, T, 7)``, ``(B, H, W, 3)``,
            ``(B, T, 3)``, ``(B, 4)``. A token's mask is its top-left pixel's.
        months
            ``(B, T)`` month of each timestep, 0 = January.
        patch_size
            Token size ``P`` in pixels, ``1..max_patch_size`` (default the largest); ``H``
            and ``W`` must be multiples of it.
        input_resolution_m
            Pixel size in metres (the spatial encoding uses ``res * P / 10``).

        Returns
        -------
        GalileoTokens
            Tokens after the final LayerNorm (masked ones equal ``norm.bias``) and the
            token masks, in the official order.
        """
        cfg = self.config
        p = cfg.max_patch_size if patch_size is None else patch_size
        if isinstance(p, bool) or not isinstance(p, int | np.integer) \
                or not 1 <= int(p) <= cfg.max_patch_size:
            raise ArgumentError(
                f"patch_size must be an integer in 1..{cfg.max_patch_size}, got {patch_size!r}")
        p = int(p)
        b, hh, ww, t = _check_layout(space_time_x, space_x, time_x, static_x, space_time_mask,
                                     space_mask, time_mask, static_mask, months)
        if hh % p or ww % p:
            raise DataError(
                f"Galileo input of {hh}x{ww} pixels is not a multiple of patch_size {p}; crop "
                f"or pad it to a multiple of {p}"
            )
        if t > cfg.max_sequence_length:
            raise DataError(
                f"Galileo takes at most {cfg.max_sequence_length} timesteps, got {t}; "
                "composite the time series first, e.g. xsky.composite(obj, freq='MS')"
            )
        dt, dev = self.norm.weight.dtype, self.norm.weight.device
        h, w, d, q = hh // p, ww // p, cfg.embedding_size, cfg.embedding_size // 4
        s_t_m = space_time_mask[:, ::p, ::p]
        sp_m = space_mask[:, ::p, ::p]
        t_m, st_m = time_mask, static_mask
        months = months.to(device=dev, dtype=torch.long)

        # projections (a group unseen in the whole batch is not projected: it is dropped)
        s_t = torch.stack([
            self.space_time_embed[g](space_time_x[..., a:z].to(dt), p)
            if bool(_seen(s_t_m[..., i]).any()) else space_time_x.new_zeros((b, h, w, t, d), dtype=dt)
            for i, (g, (a, z)) in enumerate(SPACE_TIME_GROUPS.items())], dim=-2)
        sp = torch.stack([
            self.space_embed[g](space_x[..., a:z].to(dt), p)
            if bool(_seen(sp_m[..., i]).any()) else space_x.new_zeros((b, h, w, d), dtype=dt)
            for i, (g, (a, z)) in enumerate(SPACE_GROUPS.items())], dim=-2)
        tt = torch.stack([
            self.time_embed[g](time_x[..., a:z].to(dt))
            if bool(_seen(t_m[..., i]).any()) else time_x.new_zeros((b, t, d), dtype=dt)
            for i, (g, (a, z)) in enumerate(TIME_GROUPS.items())], dim=-2)
        st = torch.stack([
            self.static_embed[g](static_x[..., a:z].to(dt))
            if bool(_seen(st_m[..., i]).any()) else static_x.new_zeros((b, d), dtype=dt)
            for i, (g, (a, z)) in enumerate(STATIC_GROUPS.items())], dim=-2)

        # encodings: channel | time index | month | space, a quarter each
        n_g, n_sp, n_t, n_st = s_t.shape[-2], sp.shape[-2], tt.shape[-2], st.shape[-2]
        pos = self.pos_embed[:t].to(dt)
        month = self.month_embed(months).to(dt)  # (B, T, q)
        space = _spatial_encoding(h, w, input_resolution_m * p / BASE_GSD, q, dt, dev)
        s_t = s_t + torch.cat([
            self.s_t_channel_embed.to(dt).expand(b, h, w, t, n_g, q),
            pos[None, None, None, :, None].expand(b, h, w, t, n_g, q),
            month[:, None, None, :, None].expand(b, h, w, t, n_g, q),
            space[None, :, :, None, None].expand(b, h, w, t, n_g, q)], dim=-1)
        sp = sp + torch.cat([
            self.sp_channel_embed.to(dt).expand(b, h, w, n_sp, q),
            sp.new_zeros((b, h, w, n_sp, 2 * q)),
            space[None, :, :, None].expand(b, h, w, n_sp, q)], dim=-1)
        tt = tt + torch.cat([
            self.t_channel_embed.to(dt).expand(b, t, n_t, q),
            pos[None, :, None].expand(b, t, n_t, q),
            month[:, :, None].expand(b, t, n_t, q),
            tt.new_zeros((b, t, n_t, q))], dim=-1)
        st = st + torch.cat([self.st_channel_embed.to(dt).expand(b, n_st, q),
                             st.new_zeros((b, n_st, 3 * q))], dim=-1)

        # one sequence, masked tokens dropped, attention, scattered back
        sizes = [h * w * t * n_g, h * w * n_sp, t * n_t, n_st]
        x = torch.cat([s_t.reshape(b, -1, d), sp.reshape(b, -1, d), tt.reshape(b, -1, d), st],
                      dim=1)
        m = torch.cat([s_t_m.reshape(b, -1), sp_m.reshape(b, -1), t_m.reshape(b, -1),
                       st_m.reshape(b, -1)], dim=1).to(dev)
        x = self.norm(self._attend(x, m < 1))
        xs = torch.split(x, sizes, dim=1)
        return GalileoTokens(xs[0].reshape(b, h, w, t, n_g, d), xs[1].reshape(b, h, w, n_sp, d),
                             xs[2].reshape(b, t, n_t, d), xs[3], s_t_m, sp_m, t_m, st_m, months)

    def _attend(self, x: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The blocks over the seen tokens of each row (sorted to the front with a stable
        sort, the batch cut to its longest row, a key-padding mask); masked tokens are
        returned as zeros."""
        b, n, d = x.shape
        longest = int(seen.sum(dim=1).max()) if n and b else 0
        if longest == 0:
            return torch.zeros_like(x)
        order = torch.sort(seen.to(torch.int32), dim=1, descending=True, stable=True).indices
        order = order[:, :longest]
        idx = order[:, :, None].expand(b, longest, d)
        keep = seen.gather(1, order)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        h = torch.where(keep[:, :, None], x.gather(1, idx), zero)
        # a row without any seen token attends to its (zero) first slot, not to nothing
        attn_keep = keep.clone()
        attn_keep[:, 0] |= ~keep.any(dim=1)
        for blk in self.blocks:
            h = blk(h, attn_keep)
        return torch.zeros_like(x).scatter(1, idx, torch.where(keep[:, :, None], h, zero))

    # -- pooling ----------------------------------------------------------------------
    @staticmethod
    def average_tokens(s_t_x: torch.Tensor, sp_x: torch.Tensor, t_x: torch.Tensor,
                       st_x: torch.Tensor, s_t_m: torch.Tensor, sp_m: torch.Tensor,
                       t_m: torch.Tensor, st_m: torch.Tensor) -> torch.Tensor:
        """``(B, D)``: the mean of every seen token of all four families (the official
        ``Encoder.average_tokens``, the embedding of its inference code). A sample without
        any seen token gives zeros (the official code divides by zero)."""
        b, d = s_t_x.shape[0], s_t_x.shape[-1]
        x = torch.cat([s_t_x.reshape(b, -1, d), sp_x.reshape(b, -1, d), t_x.reshape(b, -1, d),
                       st_x.reshape(b, -1, d)], dim=1)
        wt = _seen(torch.cat([s_t_m.reshape(b, -1), sp_m.reshape(b, -1), t_m.reshape(b, -1),
                              st_m.reshape(b, -1)], dim=1)).to(device=x.device, dtype=x.dtype)
        return (x * wt[:, :, None]).sum(dim=1) / wt.sum(dim=1, keepdim=True).clamp(min=1)

    @staticmethod
    def average_tokens_per_patch(s_t_x: torch.Tensor, sp_x: torch.Tensor, t_x: torch.Tensor,
                                 st_x: torch.Tensor, s_t_m: torch.Tensor, sp_m: torch.Tensor,
                                 t_m: torch.Tensor, st_m: torch.Tensor) -> torch.Tensor:
        """``(B, (H/P) (W/P), D)``, patches in row-major order: per patch, the mean of its
        seen space-time and space tokens together with every seen time and static token
        (the official ``Encoder.apply_mask_and_average_tokens_per_patch``). A patch without
        any seen token gives zeros."""
        b, h, w = s_t_x.shape[:3]
        d, s = s_t_x.shape[-1], h * w
        dev, dt = s_t_x.device, s_t_x.dtype

        def part(x: torch.Tensor, m: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
            wt = _seen(m.reshape(b, rows, -1)).to(device=dev, dtype=dt)
            return (x.reshape(b, rows, -1, d) * wt[..., None]).sum(dim=2), wt.sum(dim=2)

        a_sum, a_n = part(s_t_x, s_t_m, s)
        p_sum, p_n = part(sp_x, sp_m, s)
        g_sum, g_n = part(torch.cat([t_x.reshape(b, -1, d), st_x.reshape(b, -1, d)], dim=1),
                          torch.cat([t_m.reshape(b, -1), st_m.reshape(b, -1)], dim=1), 1)
        total = a_sum + p_sum + g_sum
        count = (a_n + p_n + g_n).clamp(min=1)
        return total / count[..., None]


def _check_layout(s_t_x: torch.Tensor, sp_x: torch.Tensor, t_x: torch.Tensor,
                  st_x: torch.Tensor, s_t_m: torch.Tensor, sp_m: torch.Tensor,
                  t_m: torch.Tensor, st_m: torch.Tensor,
                  months: torch.Tensor) -> tuple[int, int, int, int]:
    """``(B, H, W, T)`` after checking every array against the official layout."""
    if s_t_x.ndim != 5:
        raise DataError(f"space_time_x must be (B, H, W, T, {_N_ST}), got shape "
                        f"{tuple(s_t_x.shape)}")
    b, hh, ww, t = (int(v) for v in s_t_x.shape[:4])
    want = {
        "space_time_x": (s_t_x, (b, hh, ww, t, _N_ST)),
        "space_x": (sp_x, (b, hh, ww, _N_SP)),
        "time_x": (t_x, (b, t, _N_T)),
        "static_x": (st_x, (b, _N_STATIC)),
        "space_time_mask": (s_t_m, (b, hh, ww, t, len(SPACE_TIME_GROUPS))),
        "space_mask": (sp_m, (b, hh, ww, len(SPACE_GROUPS))),
        "time_mask": (t_m, (b, t, len(TIME_GROUPS))),
        "static_mask": (st_m, (b, len(STATIC_GROUPS))),
        "months": (months, (b, t)),
    }
    for name, (arr, shape) in want.items():
        if tuple(arr.shape) != shape:
            raise DataError(
                f"Galileo input {name!r} has shape {tuple(arr.shape)}, expected {shape} (the "
                "official layout; build the inputs with xsky.models.galileo.galileo_inputs)"
            )
    return b, hh, ww, t


def official_files(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """``(encoder.pt, config.json or None)`` for a weights file or folder.

    Raises
    ------
    CheckpointError
        The path does not exist, or a folder without ``encoder.pt``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        enc = p / ENCODER_FILE
        if not enc.is_file():
            found = sorted(f.name for f in p.iterdir())
            raise CheckpointError(
                f"Galileo weights folder {str(p)!r} has no {ENCODER_FILE} (it holds "
                f"{', '.join(found[:8]) or 'nothing'}); pass the folder of the official "
                "weights (data/models/nano) or the encoder.pt file itself"
            )
        cfg = p / CONFIG_FILE
        return enc, cfg if cfg.is_file() else None
    if not p.is_file():
        raise CheckpointError(f"Galileo weights {str(p)!r} do not exist; pass a local "
                              "encoder.pt or the folder that holds it")
    cfg = p.parent / CONFIG_FILE
    return p, cfg if cfg.is_file() else None


def checkpoint_filter_fn(obj: Any, model: Any = None) -> dict[str, Any]:
    """An official Galileo file as the module's state dict: unwrapped and with the
    ``.backbone`` some official files have in their keys removed (as ``load_from_folder``
    does)."""
    state = unwrap_state(obj, model, source="the Galileo weights file")
    return {str(k).replace(".backbone", ""): v for k, v in state.items()}


def _config_from_state(state: Mapping[str, Any], num_heads: int | None,
                       source: str) -> GalileoConfig:
    """Sizes read off an encoder state dict (the head count only for official widths)."""
    try:
        d = int(state["norm.weight"].shape[0])
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
        seq = int(state["pos_embed"].shape[0])
        patch = int(state["space_time_embed.S1.proj.weight"].shape[-1])
    except (KeyError, IndexError, AttributeError) as err:
        raise CheckpointError(
            f"Galileo weights {source!r} are not an encoder state dict (missing {err}); pass "
            "the official encoder.pt"
        ) from None
    heads = num_heads if num_heads is not None else _HEADS_BY_WIDTH.get(d)
    if heads is None:
        raise CheckpointError(
            f"Galileo weights {source!r} have embedding size {d}, none of the official sizes "
            f"({format_choices(_HEADS_BY_WIDTH)}), and no config.json beside them: the number "
            "of attention heads cannot be read from the weights. Put the config.json beside "
            "the file, or pass num_heads="
        )
    return GalileoConfig(d, depth, heads, hidden / d, seq, patch)


# --------------------------------------------------------------------------------------
# Inputs from user units
# --------------------------------------------------------------------------------------
class GalileoInputs(NamedTuple):
    """The official input tensors, in the order :meth:`Galileo.forward` takes them
    (``model(*inputs, patch_size=P)``); masks are float32, 1 = not seen."""

    space_time_x: torch.Tensor  #: (B, H, W, T, 13) float32
    space_x: torch.Tensor  #: (B, H, W, 16)
    time_x: torch.Tensor  #: (B, T, 6)
    static_x: torch.Tensor  #: (B, 18)
    space_time_mask: torch.Tensor  #: (B, H, W, T, 7)
    space_mask: torch.Tensor  #: (B, H, W, 3)
    time_mask: torch.Tensor  #: (B, T, 3)
    static_mask: torch.Tensor  #: (B, 4)
    months: torch.Tensor  #: (B, T) int64


def to_cartesian(latlon: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` (lat, lon) degrees -> ``(..., 3)`` unit vectors
    ``(cos lat cos lon, cos lat sin lon, sin lat)``, in float32 like the official code."""
    ll = latlon.to(torch.float32)
    lat = ll[..., 0] * math.pi / 180
    lon = ll[..., 1] * math.pi / 180
    return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon),
                        torch.sin(lat)], dim=-1)


def _as_tensor(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    try:
        return torch.as_tensor(np.asarray(x), device=device)
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"{name} must be an array, got {type(x).__name__}") from err


def _band_positions(bands: Sequence[str] | None, table: Mapping[str, str],
                    order: tuple[str, ...], what: str) -> list[int]:
    if bands is None:
        return list(range(len(order)))
    pos = []
    for band in bands:
        canon = table.get(str(band))
        if canon is None:
            raise ArgumentError(f"{what} band {band!r} is not one Galileo takes; choose from "
                                f"{format_choices(order)}")
        pos.append(order.index(canon))
    if len(set(pos)) != len(pos):
        raise ArgumentError(f"{what} bands {list(bands)} name a band twice")
    return pos


def _band_validity(x: torch.Tensor, valid: Any, name: str) -> torch.Tensor:
    """Per-band validity ``(B, H, W, T, C)``: given (per band, or per pixel-date and then
    broadcast over bands) and false where a value is not finite."""
    ok = torch.isfinite(x)
    if valid is None:
        return ok
    v = _as_tensor(valid, f"{name}_valid", x.device).to(torch.bool)
    if v.shape == x.shape[:4]:
        v = v[..., None]
    try:
        return ok & v.expand_as(x)
    except RuntimeError:
        raise DataError(f"{name}_valid has shape {tuple(v.shape)}; give {tuple(x.shape)} (per "
                        f"band) or {tuple(x.shape[:4])} (per pixel and date)") from None


def _fill_with_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Invalid values -> the mean of the band's valid values over the window and all dates
    (0 where a band has none), the filling of the official ``Dataset._fillna``."""
    w = valid.to(torch.float64)
    n = w.sum(dim=(1, 2, 3), keepdim=True)
    mean = (torch.where(valid, x, 0).to(torch.float64) * w).sum(dim=(1, 2, 3), keepdim=True)
    mean = (mean / n.clamp(min=1)).to(x.dtype)
    return torch.where(valid, x, mean.expand_as(x))


def galileo_inputs(
    s2: Any = None,
    s1: Any = None,
    *,
    months: Any,
    s2_bands: Sequence[str] | None = None,
    s1_bands: Sequence[str] | None = None,
    s2_valid: Any = None,
    s1_valid: Any = None,
    latlon: Any = None,
    ndvi: bool = True,
    fill_invalid: Literal["keep", "mean"] = "keep",
    normalize: bool = True,
) -> GalileoInputs:
    """The official Galileo input tensors from Sentinel-2/1 arrays in user units.

    Places the bands (``construct_galileo_input``), computes NDVI and the location, masks
    what is absent or invalid, and applies the *pretraining* normalisation (``train.py``:
    ``(x - (mean - 2 std)) / (4 std)`` per S1/S2 band, in float64, cast to float32; not the
    official ``normalize=True`` path, whose string-keyed statistics are skipped, leaving S2
    ``x / 1e4`` and S1 ``(x - 25) / 25``).

    Parameters
    ----------
    s2
        ``(B, H, W, T, C)`` Sentinel-2 L2A DN (reflectance x 10 000), bands ``s2_bands``.
    s1
        ``(B, H, W, T, C)`` Sentinel-1 backscatter in dB, bands ``s1_bands``. At least one
        of ``s2`` and ``s1``; both share the time axis.
    months
        ``(B, T)`` (or ``(T,)``) month of each timestep, 0 = January.
    s2_bands, s1_bands
        Bands given, in the arrays' order (default: all of :data:`S2_BANDS` / ``VV, VH``);
        ``"B04"`` or the official ``"B4"``. A group with a band missing is masked.
    s2_valid, s1_valid
        Validity, per band ``(B, H, W, T, C)`` or per pixel and date ``(B, H, W, T)``;
        values that are not finite are invalid anyway. A band group is masked at a pixel and
        date where any of its bands is invalid (the mask is the max over its bands).
    latlon
        ``(B, 2)`` window centre (lat, lon) in degrees, or ``None`` (location masked); a
        sample with a non-finite lat/lon gets its location masked.
    ndvi
        Compute NDVI ``(B8 - B4) / (B8 + B4)`` from the raw DN (0 where ``B8 + B4 <= 0``;
        not normalised), masked where B4 or B8 is invalid; ``False`` masks NDVI.
    fill_invalid
        ``"keep"``: finite values are used as given, valid or not (non-finite ones become
        0); ``"mean"``: invalid values become the mean of the band's valid values in the
        sample over all dates (as the official ``Dataset._fillna`` fills missing data with
        the band mean, without its averaging in of 0 for dates with no valid pixel), so an
        invalid pixel inside a seen token does not enter its projection as 0 DN.
    normalize
        ``False`` returns the raw official layout (user units), before normalisation.

    Returns
    -------
    GalileoInputs
        Float32 tensors on the device of the inputs; space-only, time-only, LandScan and
        static DW/WC groups are masked (not given).

    Examples
    --------
    >>> import torch
    >>> from xsky.models.galileo import galileo_inputs
    >>> x = galileo_inputs(s2=torch.full((1, 4, 4, 1, 4), 1000.0), months=[[6]],
    ...                    s2_bands=["B02", "B03", "B04", "B08"])
    >>> x.space_time_mask[0, 0, 0, 0].tolist()  # S1, RGB, red edge, NIR10, NIR20, SWIR, NDVI
    [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    """
    if fill_invalid not in ("keep", "mean"):
        raise ArgumentError(f"fill_invalid must be 'keep' or 'mean', got {fill_invalid!r}")
    given = {name: _as_tensor(x, name) for name, x in (("s2", s2), ("s1", s1)) if x is not None}
    if not given:
        raise DataError("Galileo needs Sentinel-2 (s2=) and/or Sentinel-1 (s1=) input")
    ref = next(iter(given.values()))
    dev = ref.device
    if ref.ndim != 5:
        raise DataError(f"{next(iter(given))} must be (B, H, W, T, band), got shape "
                        f"{tuple(ref.shape)}")
    b, hh, ww, t = (int(v) for v in ref.shape[:4])
    raw = torch.zeros((b, hh, ww, t, _N_ST), dtype=torch.float32, device=dev)
    ok = torch.zeros((b, hh, ww, t, _N_ST), dtype=torch.bool, device=dev)
    specs = {"s2": (s2_bands, _S2_ALIASES, S2_BANDS, 2, s2_valid),
             "s1": (s1_bands, {b_: b_ for b_ in S1_BANDS}, S1_BANDS, 0, s1_valid)}
    for name, x in given.items():
        bands, table, order, first, valid = specs[name]
        pos = _band_positions(bands, table, order, name)
        if x.ndim != 5 or tuple(x.shape[:4]) != (b, hh, ww, t) or x.shape[4] != len(pos):
            raise DataError(
                f"{name} has shape {tuple(x.shape)}, expected {(b, hh, ww, t, len(pos))} "
                f"(B, H, W, T, band) for bands {[order[i] for i in pos]}; all inputs share "
                "B, H, W and T"
            )
        x = x.to(device=dev, dtype=torch.float32)
        v = _band_validity(x, valid, name)
        x = torch.where(torch.isfinite(x), x, 0)
        if fill_invalid == "mean":
            x = _fill_with_mean(x, v)
        chans = [first + i for i in pos]
        raw[..., chans] = x
        ok[..., chans] = v
    if ndvi:  # on the raw DN, in float32, as Dataset.calculate_ndi
        b4, b8 = raw[..., _B4], raw[..., _B8]
        total = b8 + b4
        raw[..., _NDVI] = torch.where(total > 0, (b8 - b4) / total, 0)
        ok[..., _NDVI] = ok[..., _B4] & ok[..., _B8]
    s_t_m = torch.stack([~ok[..., a:z].all(dim=-1) for a, z in SPACE_TIME_GROUPS.values()],
                        dim=-1).to(torch.float32)

    mon = _as_tensor(months, "months", dev).to(torch.int64)
    if mon.ndim == 1:
        mon = mon[None].expand(b, -1)
    if tuple(mon.shape) != (b, t):
        raise DataError(f"months has shape {tuple(mon.shape)}, expected {(b, t)} (one month "
                        "per timestep, 0 = January)")
    if mon.numel() and (int(mon.min()) < 0 or int(mon.max()) > 11):
        raise DataError(f"months must be 0 (January) .. 11, got values {int(mon.min())} .. "
                        f"{int(mon.max())}; subtract 1 from calendar months")

    static = torch.zeros((b, _N_STATIC), dtype=torch.float32, device=dev)
    st_m = torch.ones((b, len(STATIC_GROUPS)), dtype=torch.float32, device=dev)
    if latlon is not None:
        ll = _as_tensor(latlon, "latlon", dev)
        if tuple(ll.shape) != (b, 2):
            raise DataError(f"latlon has shape {tuple(ll.shape)}, expected {(b, 2)} "
                            "((lat, lon) degrees per sample)")
        ll = ll.to(torch.float64)
        fine = torch.isfinite(ll).all(dim=1)
        if bool(fine.any()):
            lat, lon = ll[fine, 0], ll[fine, 1]
            if bool((lat.abs() > 90).any() | (lon.abs() > 180).any()):
                raise DataError("latlon is out of range (|lat| <= 90, |lon| <= 180); give "
                                "WGS84 degrees in (lat, lon) order")
        xyz = to_cartesian(torch.where(fine[:, None], ll, 0))
        a, z = STATIC_GROUPS["location"]
        static[:, a:z] = torch.where(fine[:, None], xyz, 0)
        st_m[:, list(STATIC_GROUPS).index("location")] = (~fine).to(torch.float32)
    space = torch.zeros((b, hh, ww, _N_SP), dtype=torch.float32, device=dev)
    time_ = torch.zeros((b, t, _N_T), dtype=torch.float32, device=dev)
    if normalize:
        raw, space = _normalise(raw, "space_time"), _normalise(space, "space")
        time_, static = _normalise(time_, "time"), _normalise(static, "static")
    return GalileoInputs(
        raw, space, time_, static, s_t_m,
        torch.ones((b, hh, ww, len(SPACE_GROUPS)), dtype=torch.float32, device=dev),
        torch.ones((b, t, len(TIME_GROUPS)), dtype=torch.float32, device=dev),
        st_m, mon)


# --------------------------------------------------------------------------------------
# The engine adapter
# --------------------------------------------------------------------------------------
_CUM_DAYS = np.cumsum([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _month_from_doy(doy: torch.Tensor) -> torch.Tensor:
    """Month (0 = January) of a day of year 1..366 (a 365-day calendar; 366 -> December)."""
    edges = torch.as_tensor(_CUM_DAYS[1:-1], dtype=torch.int64, device=doy.device)
    return torch.bucketize(doy.to(torch.int64) - 1, edges, right=True)


class GalileoEmbedder(EmbeddingModel):
    """A :class:`Galileo` encoder behind the engine's model contract.

    ``embed_windows`` takes S2 (DN) and/or S1 (dB) windows ``(N, C, T, W, W)`` with per-band
    validity, months and, with ``location``, the window centres; it builds the official
    inputs with :func:`galileo_inputs` (invalid values filled with the band's window mean)
    and returns the per-patch pooling at stride ``patch_size`` (``pooling="patch"``) or one
    vector per window (``pooling="window"``).

    Parameters
    ----------
    encoder
        The encoder.
    spec
        Its :class:`~xsky.models.ModelSpec`.
    patch_size
        Token size in pixels.
    pooling
        ``"patch"`` (:meth:`Galileo.average_tokens_per_patch`) or ``"window"``
        (:meth:`Galileo.average_tokens`).
    ndvi
        Feed NDVI from B04/B08 (masked where either is missing).
    location
        Feed the window centre (``inputs["latlon"]``) as the location token.
    """

    def __init__(self, encoder: Galileo, spec: ModelSpec, *, patch_size: int = 4,
                 pooling: Literal["patch", "window"] = "patch", ndvi: bool = True,
                 location: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.spec = spec
        self.patch_size = int(patch_size)
        self.pooling = pooling
        self.ndvi = bool(ndvi)
        self.location = bool(location)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """:meth:`embed_windows` with the inputs as keywords."""
        return self.embed_windows(inputs)

    def _months(self, inputs: Mapping[str, torch.Tensor], present: Sequence[str], n: int,
                t: int, device: torch.device) -> torch.Tensor:
        """``(N, T)`` months: the engine's ``<m>_month`` (S1 and S2 must agree), else the
        reference modality's day of year, else the official default month."""
        given = [inputs[m + "_month"].to(device=device, dtype=torch.int64).expand(n, t)
                 for m in present if m + "_month" in inputs]
        for other in given[1:]:
            if not torch.equal(other, given[0]):
                raise DataError(
                    "Galileo: the S2 and S1 dates fall in other months; Galileo has one time "
                    "axis for both. Composite both onto the same periods first, e.g. "
                    "xsky.composite(obj, freq='MS')"
                )
        if given:
            return given[0]
        doy = next((inputs[m + "_doy"] for m in present if m + "_doy" in inputs), None)
        if doy is not None:
            return _month_from_doy(doy.to(device)).expand(n, t)
        return torch.full((n, t), DEFAULT_MONTH, dtype=torch.int64, device=device)

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Embed a batch of windows (see the class docstring and the engine contract)."""
        present = [m for m in ("s2", "s1") if m in inputs]
        if not present:
            raise DataError(f"{self.spec.name} needs Sentinel-2 ('s2') and/or Sentinel-1 "
                            f"('s1') input; got {format_choices(inputs)}")
        ref = inputs[present[0]]
        if ref.ndim != 5:
            raise ModelError(f"{self.spec.name}: '{present[0]}' must be (N, C, T, W, W), got "
                             f"shape {tuple(ref.shape)}")
        n, _, t, hh, ww = (int(v) for v in ref.shape)
        for m in present[1:]:
            if tuple(inputs[m].shape[2:]) != (t, hh, ww):
                raise DataError(
                    f"{self.spec.name}: 's1' has {inputs[m].shape[2]} dates on "
                    f"{tuple(inputs[m].shape[3:])} pixels, 's2' {t} on {(hh, ww)}; Galileo "
                    "has one time axis for S1 and S2. Composite both onto the same periods "
                    "first, e.g. xsky.composite(obj, freq='MS')"
                )
        cfg = self.encoder.config
        if t > cfg.max_sequence_length:
            raise DataError(
                f"{self.spec.name} takes at most {cfg.max_sequence_length} timesteps, got {t}; "
                "composite the time series first, e.g. xsky.composite(obj, freq='MS')"
            )
        dev = ref.device
        arrays: dict[str, Any] = {}
        for m in present:
            x = inputs[m]
            bv = inputs.get(m + "_band_valid")
            if bv is None:
                v = inputs.get(m + "_valid")
                bv = v[:, None].expand_as(x) if v is not None else torch.isfinite(x)
            arrays[m] = x.permute(0, 3, 4, 2, 1)
            arrays[m + "_valid"] = bv.permute(0, 3, 4, 2, 1)
        latlon = inputs.get("latlon") if self.location else None
        if latlon is not None and tuple(latlon.shape) != (n, 2):
            raise ModelError(f"{self.spec.name}: latlon must be (N, 2) window centres, got "
                             f"shape {tuple(latlon.shape)}")
        built = galileo_inputs(
            months=self._months(inputs, present, n, t, dev), latlon=latlon, ndvi=self.ndvi,
            fill_invalid="mean", **arrays)
        tokens = self.encoder(*built, patch_size=self.patch_size)
        if self.pooling == "window":
            return Galileo.average_tokens(*tokens[:-1]).float()
        per_patch = Galileo.average_tokens_per_patch(*tokens[:-1])
        h, w = hh // self.patch_size, ww // self.patch_size
        return per_patch.transpose(1, 2).reshape(n, -1, h, w).float()


# --------------------------------------------------------------------------------------
# Specs, cards and registration
# --------------------------------------------------------------------------------------
_POOLINGS = ("patch", "window")


def _bare_spec(size: str, *, patch_size: int = 4, window: int = 16, pooling: str = "patch",
               location: bool = True) -> ModelSpec:
    cfg = GALILEO_PRESETS[size]
    return ModelSpec(
        name=f"galileo-{size}",
        modalities=(ModalitySpec("s2", S2_BANDS, None, None, units="dn", partial=True),
                    ModalitySpec("s1", S1_BANDS, None, None, units="db", partial=True)),
        window=window,
        stride=patch_size if pooling == "patch" else window,
        feature_dim=cfg.embedding_size,
        fuses_time=True,
        output="dense" if pooling == "patch" else "pooled",
        dtype="float32",
        default_batch_size=16 if size != "base" else 4,
        required_modalities=(),
        band_mask=True,
        location="window" if location else None,
        max_timesteps=cfg.max_sequence_length,
        shared_time=True,
    )


def _weights(size: str) -> tuple[WeightFile, ...]:
    if size == "nano":
        raw = f"https://raw.githubusercontent.com/nasaharvest/galileo/{OFFICIAL_COMMIT}/data/models/nano"
        src = (f"{OFFICIAL_REPO} data/models/nano at commit {OFFICIAL_COMMIT} (also in "
               "../shared/data/weights_small/galileo_nano)")
        return (WeightFile(ENCODER_FILE, GALILEO_NANO_SHA256, f"{raw}/{ENCODER_FILE}", src),
                WeightFile(CONFIG_FILE, _NANO_CONFIG_SHA256, f"{raw}/{CONFIG_FILE}", src))
    src = (f"Hugging Face repository nasaharvest/galileo, folder models/{size} (linked from the "
           "official README); the pinned revision and the sha256 are not known offline, so "
           "pass the local file or folder")
    return (WeightFile(ENCODER_FILE, None, None, src), WeightFile(CONFIG_FILE, None, None, src))


def _card(size: str) -> ModelCard:
    cfg = GALILEO_PRESETS[size]
    return ModelCard.from_spec(
        _bare_spec(size),
        description=(f"Galileo-{size} (Tseng et al. 2025), a multi-modal spatio-temporal "
                     "encoder: S2 band groups, NDVI, S1 and location over up to 24 dates, "
                     "dense per-patch embeddings at stride patch_size (or one per window)"),
        license="MIT",
        paper=_PAPER,
        family="galileo",
        weights=_weights(size),
        extra={
            "architecture": (f"Galileo encoder: embedding {cfg.embedding_size}, depth "
                             f"{cfg.depth}, {cfg.num_heads} heads, MLP ratio "
                             f"{cfg.mlp_ratio:g}, patch kernels {cfg.max_patch_size}x"
                             f"{cfg.max_patch_size} (FlexiPatchEmbed, patch sizes 1..8)"),
            "official_code": f"{OFFICIAL_REPO} at {OFFICIAL_COMMIT}",
            "sizes_source": ("data/models/nano/config.json" if size == "nano" else
                             f"config/models/{size}.json of the official repository"),
            "preprocessing": ("pretraining normalisation (train.py, 'std'): (x - (mean - 2 "
                              "std)) / (4 std) per S2 band (DN) and S1 band (dB), in float64; "
                              "NDVI (B8-B4)/(B8+B4) and location (to_cartesian) unnormalised; "
                              "a band group is masked where any of its bands is missing"),
            "max_timesteps": cfg.max_sequence_length,
            # measured on real cubes (benchmarks/galileo_real.py), faithful to the official
            # encoder: its outputs keep each token's spatial encoding
            "caveat": ("with pooling='patch', ~70 % of the variance of the dense map is each "
                       "patch's position inside its window (a checkerboard of period "
                       "window/patch_size in PCA plots); for pixel-level maps use "
                       "window=patch_size, or remove the mean embedding of each in-window "
                       "position"),
        },
    )


#: Model cards of the Galileo sizes, by registry name.
CARDS: dict[str, ModelCard] = {f"galileo-{s}": _card(s) for s in GALILEO_PRESETS}


def _spec(size: str, **options: Any) -> ModelSpec:
    return _bare_spec(size, **options).replace(meta=CARDS[f"galileo-{size}"].metadata())


def _check_options(name: str, patch_size: Any, window: Any, pooling: Any) -> tuple[int, int]:
    cfg = GALILEO_PRESETS[name.removeprefix("galileo-")]
    if isinstance(patch_size, bool) or not isinstance(patch_size, int | np.integer) \
            or not 1 <= int(patch_size) <= cfg.max_patch_size:
        raise ArgumentError(f"{name}: patch_size must be an integer in 1..{cfg.max_patch_size}, "
                            f"got {patch_size!r}")
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or int(window) < 1 \
            or int(window) % int(patch_size):
        raise ArgumentError(f"{name}: window must be a positive multiple of patch_size "
                            f"{patch_size}, got {window!r}")
    if pooling not in _POOLINGS:
        raise ArgumentError(f"{name}: pooling must be one of {format_choices(_POOLINGS)}, got "
                            f"{pooling!r}")
    return int(patch_size), int(window)


def _create(size: str, weights: str | os.PathLike[str] | None, *, patch_size: int, window: int,
            pooling: Literal["patch", "window"], ndvi: bool, location: bool,
            trust: bool) -> GalileoEmbedder:
    name = f"galileo-{size}"
    patch_size, window = _check_options(name, patch_size, window, pooling)
    if weights is None:
        encoder = Galileo(GALILEO_PRESETS[size])
    else:
        enc_file, _ = official_files(weights)
        encoder = Galileo.from_official(weights, trust=trust,
                                        sha256=CARDS[name].expected_sha256(enc_file))
        if encoder.config != GALILEO_PRESETS[size]:
            fits = [n for n, c in GALILEO_PRESETS.items() if c == encoder.config]
            hint = (f"use create_model('galileo-{fits[0]}', ...)" if fits else
                    "load them with xsky.models.galileo.Galileo.from_official")
            raise CheckpointError(
                f"weights {str(weights)!r} are a Galileo encoder of sizes {encoder.config}, not "
                f"{name} ({GALILEO_PRESETS[size]}); {hint}"
            )
    spec = _spec(size, patch_size=patch_size, window=window, pooling=pooling, location=location)
    return GalileoEmbedder(encoder, spec, patch_size=patch_size, pooling=pooling, ndvi=ndvi,
                           location=location).eval()


_FACTORY_DOC = """Galileo-{size}: S2 (any of the ten bands, DN) and/or S1 (VV, VH, dB), <= 24 dates.

    Parameters
    ----------
    weights
        The official ``encoder.pt`` or its folder (with ``config.json``).{pinned}
    patch_size
        Token size in pixels, 1..8 (default 4, the official evaluation default).
    window
        Window in pixels, a multiple of ``patch_size``. The default 16 gives 4x4 tokens at
        patch size 4, within the 4..12 tokens per side Galileo was pretrained on, and keeps
        the sequence (<= 16 x 24 dates x 7 groups) small; larger windows give each token
        more context at a quadratic cost.
    pooling
        ``"patch"``: dense output at stride ``patch_size``, each pixel the official per-patch
        pooling; ``"window"``: one vector per window (the official ``average_tokens``).
    ndvi
        Feed NDVI from B04 and B08 (masked where either is missing).
    location
        Feed the window centre (WGS84, from the cube's CRS) as the location token.
    trust
        Allow full unpickling of a weights file that needs it (only for files you trust).
    """


@register_model("galileo-nano", spec=_spec("nano"), card=CARDS["galileo-nano"])
def create_galileo_nano(weights: str | None = None, *, patch_size: int = 4, window: int = 16,
                        pooling: Literal["patch", "window"] = "patch", ndvi: bool = True,
                        location: bool = True, trust: bool = False) -> GalileoEmbedder:
    return _create("nano", weights, patch_size=patch_size, window=window, pooling=pooling,
                   ndvi=ndvi, location=location, trust=trust)


@register_model("galileo-tiny", spec=_spec("tiny"), card=CARDS["galileo-tiny"])
def create_galileo_tiny(weights: str | None = None, *, patch_size: int = 4, window: int = 16,
                        pooling: Literal["patch", "window"] = "patch", ndvi: bool = True,
                        location: bool = True, trust: bool = False) -> GalileoEmbedder:
    return _create("tiny", weights, patch_size=patch_size, window=window, pooling=pooling,
                   ndvi=ndvi, location=location, trust=trust)


@register_model("galileo-base", spec=_spec("base"), card=CARDS["galileo-base"])
def create_galileo_base(weights: str | None = None, *, patch_size: int = 4, window: int = 16,
                        pooling: Literal["patch", "window"] = "patch", ndvi: bool = True,
                        location: bool = True, trust: bool = False) -> GalileoEmbedder:
    return _create("base", weights, patch_size=patch_size, window=window, pooling=pooling,
                   ndvi=ndvi, location=location, trust=trust)


_PIN = ("\n        The nano ``encoder.pt`` must have the sha256 on the model card "
        f"({GALILEO_NANO_SHA256[:8]}...).")
create_galileo_nano.__doc__ = _FACTORY_DOC.format(size="nano", pinned=_PIN)
create_galileo_tiny.__doc__ = _FACTORY_DOC.format(size="tiny", pinned="")
create_galileo_base.__doc__ = _FACTORY_DOC.format(size="base", pinned="")
