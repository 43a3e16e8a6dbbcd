"""SkySense (CVPR 2024): multi-modal, multi-temporal remote-sensing foundation model.

Three encoders feed a per-pixel fusion transformer:

* **HR optical** (R, G, B at ~0.31 m): Swin Transformer V2; its stage-4 map (stride 32) lies
  on the Sentinel grid, one token per 10 m pixel;
* **Sentinel-2** (10 bands) and **Sentinel-1** (VV, VH): one ViT each, patch 4, run per
  date, then an ``UPHead`` (1x1 conv + ``PixelShuffle(4)``) back to the 10 m grid in the
  Swin stage-4 width;
* **fusion**: for every 10 m pixel the sequence ``[CLS, HR, S2 dates (+ ctpe[doy-1]), S1 dates]``
  goes through a pre-norm transformer; the CLS output is the pixel's embedding.

:class:`SkySense` reproduces the official modules (SkySense v1 settings) and loads the
official weight files with :meth:`SkySense.from_official`. Sizes come from a config in the
official argument names (the ``hyperparameters`` object of the conformance fixture);
registered presets: ``skysense-huge`` (official sizes, about 1.66 B parameters),
``skysense-small`` and ``skysense-tiny`` (random weights, for CPU work and tests).

Engine use
----------
The engine tiles the Sentinel-2 grid in square windows of ``window`` pixels (plus an optional
overlap margin for context: the ViTs see only their window, so features near a window edge
have less context than in the middle). ``window`` must be a multiple of the ViT patch size
(4); HR windows are ``32 * window`` pixels and need ``window >= 8`` (the Swin window at
stage 4). The model fuses time: it gets every date of a window at once, leaves invalid dates
out of the fusion attention per pixel, and returns NaN for a pixel without any valid input.
With ``temporal="per-date"`` (:class:`SkySensePerDate`) it returns one embedding per date
instead.

The official weights are for non-commercial research only (see the SkySense licence); xsky
never downloads them: pass the local files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import modalities as _modalities
from ..exceptions import (
    ArgumentError,
    CheckpointError,
    DataError,
    DimensionError,
    XSkyError,
    format_choices,
)
from ._base import EmbeddingModel
from ._checkpoint import LoadReport, apply_state, load_checkpoint, summarise_keys
from ._registry import register_model
from ._skysense_vit import FusionEncoder, UPHead, VisionTransformer, resize_pos_embed
from ._swinv2 import SWIN_ARCHS, SwinTransformerV2
from .card import ModelCard, WeightFile
from .spec import ModalitySpec, ModelSpec

__all__ = [
    "CARDS",
    "HR_BANDS",
    "S1_BANDS",
    "S2_BANDS",
    "SKYSENSE_HR_BANDS",
    "SKYSENSE_PRESETS",
    "SKYSENSE_S1_BANDS",
    "SKYSENSE_S2_BANDS",
    "SPLIT_FILES",
    "LoadReport",
    "SkySense",
    "SkySenseConfig",
    "SkySensePerDate",
]

# --------------------------------------------------------------------------------------
# Bands and normalisation (SkySense++ ``modal_norm_dict``; ImageNet statistics for HR)
# --------------------------------------------------------------------------------------
# The model's inputs, in the order it takes them (subsets of the xsky.modalities bands).
SKYSENSE_S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
S2_MEAN = (884.30, 1144.16, 1297.47, 1624.91, 2194.64, 2422.21, 2517.76, 2581.65, 2368.51,
           1805.07)
S2_STD = (1155.15, 1183.63, 1368.11, 1370.27, 1355.55, 1416.51, 1474.79, 1439.31, 1455.52,
          1343.48)
SKYSENSE_S1_BANDS = ("VV", "VH")
S1_MEAN = (-12.548, -20.192)
S1_STD = (5.257, 5.912)
SKYSENSE_HR_BANDS = ("red", "green", "blue")
HR_MEAN = (123.675, 116.28, 103.53)
HR_STD = (58.395, 57.12, 57.375)
# HR pixels per Sentinel pixel along each axis (the Swin stage-4 stride), from the one
# modality table.
HR_FACTOR = _modalities.get("hr").grid_factor
# the former names
S2_BANDS, S1_BANDS, HR_BANDS = SKYSENSE_S2_BANDS, SKYSENSE_S1_BANDS, SKYSENSE_HR_BANDS

MODALITIES = ("hr", "s2", "s1")
#: Official split weight files, by the prefix their keys get in the full checkpoint.
SPLIT_FILES = {
    "backbone_gep": "skysense_model_backbone_hr.pth",
    "backbone_s2": "skysense_model_backbone_s2.pth",
    "backbone_s1": "skysense_model_backbone_s1.pth",
    "head_s2": "skysense_model_head_s2.pth",
    "head_s1": "skysense_model_head_s1.pth",
    "fusion": "skysense_model_fusion.pth",
}
_BACKBONE = {"hr": "backbone_gep", "s2": "backbone_s2", "s1": "backbone_s1"}

# --------------------------------------------------------------------------------------
# Configuration in the official argument names
# --------------------------------------------------------------------------------------
_VIT_HUGE = {
    "img_size": 64, "patch_size": 4, "embed_dims": 1024, "num_layers": 24, "num_heads": 16,
    "mlp_ratio": 4, "out_indices": [23], "qkv_bias": True, "drop_rate": 0.0,
    "attn_drop_rate": 0.0, "drop_path_rate": 0.3, "with_cls_token": True,
    "output_cls_token": False, "norm_cfg": {"type": "LN"}, "act_cfg": {"type": "GELU"},
    "patch_norm": False, "final_norm": False, "interpolate_mode": "bicubic", "num_fcs": 2,
}


def _preset(swin_arch: dict[str, Any], vit: dict[str, Any], fusion: dict[str, Any],
            swin_out: Sequence[int] = (3,)) -> dict[str, Any]:
    swin = {"arch": swin_arch, "img_size": 224, "patch_size": 4, "in_channels": 3,
            "window_size": 8, "drop_rate": 0.0, "drop_path_rate": 0.2,
            "out_indices": list(swin_out), "use_abs_pos_embed": False,
            "pad_small_map": False, "norm_cfg": {"type": "LN"},
            "stage_cfgs": {"downsample_cfg": {"is_post_norm": True}},
            "pretrained_window_sizes": [0, 0, 0, 0]}
    vit_full = {**_VIT_HUGE, **vit}
    vit_full["out_indices"] = [vit_full["num_layers"] - 1]
    fus = {"embed_dims": 1024, "num_layers": 24, "num_heads": 16, "mlp_ratio": 4,
           "qkv_bias": True, "drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.3,
           "with_cls_token": True, "output_cls_token": True, "norm_cfg": {"type": "LN"},
           "act_cfg": {"type": "GELU"}, "num_fcs": 2, **fusion}
    return {
        "calendar_time": 365,
        "up_scale": 4,
        "swin": swin,
        "vit_s2": {**vit_full, "in_channels": 10},
        "vit_s1": {**vit_full, "in_channels": 2},
        "fusion": fus,
    }


#: Presets, as ``hyperparameters`` objects in the official argument names.
SKYSENSE_PRESETS: dict[str, dict[str, Any]] = {
    # Official sizes: Swin-V2-H 352/[2,2,18,2], ViT-L 1024x24 (S2, S1), fusion 1024x24
    # over 2816-d tokens.
    "skysense-huge": _preset(dict(SWIN_ARCHS["huge"]), {}, {}),
    # Small random-weight variants with the same wiring, for CPU use and tests.
    "skysense-small": _preset(
        {"embed_dims": 48, "depths": [2, 2, 6, 2], "num_heads": [2, 4, 8, 16],
         "extra_norm_every_n_blocks": 6},
        {"embed_dims": 192, "num_layers": 6, "num_heads": 6},
        {"embed_dims": 192, "num_layers": 4, "num_heads": 6},
    ),
    "skysense-tiny": _preset(
        {"embed_dims": 24, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8],
         "extra_norm_every_n_blocks": 0},
        {"embed_dims": 96, "num_layers": 4, "num_heads": 3},
        {"embed_dims": 96, "num_layers": 2, "num_heads": 3},
    ),
}

# Keys of the fixture's ``hyperparameters`` that describe the sample, not the model.
_SAMPLE_KEYS = {"seed", "batch", "h", "w", "T2", "T1", "s2_doy", "s1_doy"}
_TOP_KEYS = {"swin", "vit_s2", "vit_s1", "fusion", "up_scale", "calendar_time", "use_ctpe"}
# Accepted but irrelevant to inference (training, checkpointing, init).
_IGNORED = {"drop_rate", "attn_drop_rate", "with_cp", "norm_eval", "frozen_stages",
            "init_cfg", "pretrained", "img_size", "out_indices", "output_cls_token"}
_SWIN_KEYS = {"arch", "patch_size", "in_channels", "window_size", "drop_path_rate",
              "out_indices", "use_abs_pos_embed", "interpolate_mode", "pad_small_map",
              "norm_cfg", "stage_cfgs", "patch_cfg", "pretrained_window_sizes", "qkv_bias"}
_VIT_KEYS = {"patch_size", "in_channels", "embed_dims", "num_layers", "num_heads",
             "mlp_ratio", "qkv_bias", "drop_path_rate", "with_cls_token", "norm_cfg",
             "act_cfg", "patch_norm", "final_norm", "interpolate_mode", "num_fcs"}
_FUSION_KEYS = {"input_dims", "embed_dims", "num_layers", "num_heads", "mlp_ratio",
                "qkv_bias", "drop_path_rate", "with_cls_token", "norm_cfg", "act_cfg",
                "num_fcs"}


Keys = tuple[Any, ...]


def _fail(path: Keys, msg: str) -> ArgumentError:
    where = "".join(f"[{k!r}]" for k in path)
    return ArgumentError(f"SkySense hyperparameters{where}: {msg}")


def _check_keys(d: Mapping[str, Any], known: set[str], path: Keys) -> None:
    unknown = set(d) - known - _IGNORED
    if unknown:
        raise _fail(path, f"unknown argument(s) {format_choices(unknown)}; the official "
                    f"arguments are {format_choices(known | _IGNORED)}")


def _eps(d: Mapping[str, Any], path: Keys) -> float:
    norm = d.get("norm_cfg") or {"type": "LN"}
    if norm.get("type", "LN") != "LN":
        raise _fail((*path, "norm_cfg"), f"only LayerNorm ('LN') is supported, got {norm}")
    return float(norm.get("eps", 1e-5))


def _gelu_fcs(d: Mapping[str, Any], path: Keys) -> None:
    act = d.get("act_cfg") or {"type": "GELU"}
    if act.get("type", "GELU") != "GELU":
        raise _fail((*path, "act_cfg"), f"only GELU is supported, got {act}")
    if int(d.get("num_fcs", 2)) != 2:
        raise _fail((*path, "num_fcs"), f"only 2 is supported, got {d.get('num_fcs')}")


def _pair(v: Any, path: Keys) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, Sequence) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    raise _fail(path, f"expected an int or a pair of ints, got {v!r}")


def _heads_ok(dims: int, heads: int, path: Keys) -> None:
    if heads < 1 or dims % heads:
        raise _fail(path, f"embed_dims {dims} is not divisible by num_heads {heads}")


@dataclass(frozen=True)
class SkySenseConfig:
    """Module sizes of a SkySense model, parsed from official ``hyperparameters``.

    Build with :meth:`from_hyperparameters` (a mapping in the official argument names, as in
    the conformance fixture's ``config.json``) or :meth:`preset`. Every size is derived from
    it: the Swin stage-4 width ``C4`` fixes the UPHead output, the fusion input and ``ctpe``.

    Attributes
    ----------
    hyperparameters
        The mapping it was parsed from (a deep copy).
    swin, vit_s2, vit_s1, fusion
        Keyword arguments of the module constructors.
    up_scale, calendar_time
        UPHead upsampling factor and number of ``ctpe`` rows.
    use_ctpe
        Add the date encoding ``ctpe[doy-1]`` to Sentinel-2 tokens.
    """

    hyperparameters: dict[str, Any]
    swin: dict[str, Any]
    vit_s2: dict[str, Any]
    vit_s1: dict[str, Any]
    fusion: dict[str, Any]
    up_scale: int
    calendar_time: int
    use_ctpe: bool = True
    vit_pos_grid: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def c4(self) -> int:
        """Width of Swin stage 4 = UPHead output = fusion input = ``ctpe`` width."""
        return int(self.swin["embed_dims"]) * 2 ** (len(self.swin["depths"]) - 1)

    @property
    def embed_dim(self) -> int:
        """Width of the fused embedding."""
        return int(self.fusion["embed_dims"])

    @classmethod
    def preset(cls, name: str) -> SkySenseConfig:
        """Config of a registered preset (``"skysense-huge"``, ``"skysense-small"``, ...)."""
        if name not in SKYSENSE_PRESETS:
            raise ArgumentError(f"unknown SkySense preset {name!r}; choose one of "
                                f"{format_choices(SKYSENSE_PRESETS)}")
        return cls.from_hyperparameters(SKYSENSE_PRESETS[name])

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any] | SkySenseConfig) -> SkySenseConfig:
        """Parse official ``hyperparameters`` (missing arguments take the official defaults).

        Raises
        ------
        ArgumentError
            An unknown argument (a typo), an unsupported setting, or inconsistent sizes;
            the message names the argument.
        """
        if isinstance(hp, SkySenseConfig):
            return hp
        try:
            return cls._parse(hp)
        except XSkyError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
            raise ArgumentError(
                f"SkySense hyperparameters: a value has the wrong type ({type(err).__name__}: "
                f"{err}); sizes must be integers, rates numbers, and norm_cfg/act_cfg "
                "mappings such as {'type': 'LN'}. Compare with the official config.json (or "
                "xsky.models.skysense.SKYSENSE_PRESETS)"
            ) from None

    @classmethod
    def _parse(cls, hp: Any) -> SkySenseConfig:
        if not isinstance(hp, Mapping):
            raise ArgumentError(f"SkySense hyperparameters must be a mapping or a preset name, "
                                f"got {type(hp).__name__}")
        if "hyperparameters" in hp and isinstance(hp["hyperparameters"], Mapping):
            hp = hp["hyperparameters"]  # a whole fixture config.json
        unknown = set(hp) - _TOP_KEYS - _SAMPLE_KEYS
        if unknown:
            raise ArgumentError(f"SkySense hyperparameters: unknown key(s) {format_choices(unknown)};"
                                f" expected {format_choices(_TOP_KEYS)}")
        hp = copy.deepcopy(dict(hp))
        for key in ("swin", "vit_s2", "vit_s1", "fusion"):
            if not isinstance(hp.get(key, {}), Mapping):
                raise _fail((key,), f"expected a mapping, got {type(hp[key]).__name__}")
        swin = cls._parse_swin(hp.get("swin", {}))
        vits = {m: cls._parse_vit(hp.get(f"vit_{m}", {}), (f"vit_{m}",), 10 if m == "s2" else 2)
                for m in ("s2", "s1")}
        up_scale = int(hp.get("up_scale", 4))
        for m, v in vits.items():
            if v["patch_size"] != up_scale:
                raise _fail((f"vit_{m}", "patch_size"),
                            f"{v['patch_size']} differs from up_scale {up_scale}; the UPHead "
                            "must bring the ViT grid back to the 10 m grid")
        c4 = int(swin["embed_dims"]) * 2 ** (len(swin["depths"]) - 1)
        fusion = cls._parse_fusion(hp.get("fusion", {}), c4)
        calendar_time = int(hp.get("calendar_time", 365))
        if calendar_time < 1:
            raise _fail(("calendar_time",), f"must be positive, got {calendar_time}")
        grids = {}
        for m in ("s2", "s1"):
            img = _pair(hp.get(f"vit_{m}", {}).get("img_size", 64), (f"vit_{m}", "img_size"))
            grids[m] = (img[0] // vits[m]["patch_size"], img[1] // vits[m]["patch_size"])
            vits[m]["img_size"] = img
        return cls(hyperparameters=hp, swin=swin, vit_s2=vits["s2"], vit_s1=vits["s1"],
                   fusion=fusion, up_scale=up_scale, calendar_time=calendar_time,
                   use_ctpe=bool(hp.get("use_ctpe", True)), vit_pos_grid=grids)

    @staticmethod
    def _parse_swin(d: Mapping[str, Any]) -> dict[str, Any]:
        _check_keys(d, _SWIN_KEYS, ("swin",))
        arch = d.get("arch", "huge")
        if isinstance(arch, str):
            if arch.lower() not in SWIN_ARCHS:
                raise _fail(("swin", "arch"), f"unknown arch {arch!r}; choose one of "
                            f"{format_choices(SWIN_ARCHS)} or give a dict")
            arch = SWIN_ARCHS[arch.lower()]
        if not isinstance(arch, Mapping):
            raise _fail(("swin", "arch"), f"expected a name or a dict, got {arch!r}")
        missing = {"embed_dims", "depths", "num_heads"} - set(arch)
        if missing:
            raise _fail(("swin", "arch"), f"missing {format_choices(missing)}")
        depths = [int(x) for x in arch["depths"]]
        heads = [int(x) for x in arch["num_heads"]]
        embed = int(arch["embed_dims"])
        if len(depths) != len(heads):
            raise _fail(("swin", "arch"), f"depths {depths} and num_heads {heads} differ in length")
        for i, h in enumerate(heads):
            _heads_ok(embed * 2**i, h, ("swin", "arch", "num_heads", i))
        n = len(depths)
        if d.get("use_abs_pos_embed", False):
            raise _fail(("swin", "use_abs_pos_embed"), "True is not supported (SkySense uses "
                        "no absolute position embedding)")
        if d.get("pad_small_map", False):
            raise _fail(("swin", "pad_small_map"), "True is not supported (SkySense uses False)")
        if d.get("patch_cfg"):
            raise _fail(("swin", "patch_cfg"), f"only the default is supported, got "
                        f"{d['patch_cfg']}")
        window = d.get("window_size", 8)
        windows = [int(window)] * n if isinstance(window, int) else [int(w) for w in window]
        pws = d.get("pretrained_window_sizes", [0] * n)
        pws = [int(pws)] * n if isinstance(pws, int) else [int(p) for p in pws]
        if len(windows) != n or len(pws) != n:
            raise _fail(("swin", "window_size"), f"need one window per stage ({n})")
        out = d.get("out_indices", [n - 1])
        out = [int(out)] if isinstance(out, int) else [int(i) for i in out]
        out = [i + n if i < 0 else i for i in out]
        if n - 1 not in out or any(not 0 <= i < n for i in out):
            raise _fail(("swin", "out_indices"), f"must be stage indices in 0..{n - 1} and "
                        f"include the last stage {n - 1} (the fusion input), got {out}")
        post = (d.get("stage_cfgs") or {}).get("downsample_cfg", {}).get("is_post_norm", True)
        in_ch = int(d.get("in_channels", 3))
        if in_ch != len(HR_BANDS):
            raise _fail(("swin", "in_channels"), f"{in_ch}; SkySense HR imagery has "
                        f"{len(HR_BANDS)} bands {HR_BANDS}")
        return {
            "embed_dims": embed, "depths": depths, "num_heads": heads,
            "extra_norm_every_n_blocks": int(arch.get("extra_norm_every_n_blocks", 0)),
            "patch_size": int(d.get("patch_size", 4)), "in_channels": in_ch,
            "window_size": windows, "out_indices": sorted(set(out)),
            "pretrained_window_sizes": pws, "post_norm_downsample": bool(post),
            "qkv_bias": bool(d.get("qkv_bias", True)), "eps": _eps(d, ("swin",)),
            "drop_path_rate": float(d.get("drop_path_rate", 0.0)),
        }

    @staticmethod
    def _parse_vit(d: Mapping[str, Any], path: Keys, channels: int) -> dict[str, Any]:
        _check_keys(d, _VIT_KEYS, path)
        _gelu_fcs(d, path)
        dims, heads = int(d.get("embed_dims", 1024)), int(d.get("num_heads", 16))
        _heads_ok(dims, heads, (*path, "num_heads"))
        in_ch = int(d.get("in_channels", channels))
        if in_ch != channels:
            raise _fail((*path, "in_channels"), f"{in_ch}; this branch takes {channels} bands")
        mode = d.get("interpolate_mode", "bicubic")
        if mode not in ("bicubic", "bilinear", "nearest"):
            raise _fail((*path, "interpolate_mode"), f"{mode!r}; choose 'bicubic', "
                        "'bilinear' or 'nearest'")
        return {
            "patch_size": int(d.get("patch_size", 4)), "in_channels": in_ch, "embed_dims": dims,
            "num_layers": int(d.get("num_layers", 24)), "num_heads": heads,
            "mlp_ratio": float(d.get("mlp_ratio", 4)), "qkv_bias": bool(d.get("qkv_bias", True)),
            "with_cls_token": bool(d.get("with_cls_token", True)),
            "final_norm": bool(d.get("final_norm", False)),
            "patch_norm": bool(d.get("patch_norm", False)), "eps": _eps(d, path),
            "interpolate_mode": mode, "drop_path_rate": float(d.get("drop_path_rate", 0.0)),
        }

    @staticmethod
    def _parse_fusion(d: Mapping[str, Any], c4: int) -> dict[str, Any]:
        path: Keys = ("fusion",)
        _check_keys(d, _FUSION_KEYS, path)
        _gelu_fcs(d, path)
        if not d.get("with_cls_token", True) or not d.get("output_cls_token", True):
            raise _fail(path, "with_cls_token and output_cls_token must be True (the fused "
                        "embedding is the CLS output)")
        if int(d.get("input_dims", c4)) != c4:
            raise _fail((*path, "input_dims"), f"{d['input_dims']} differs from the Swin "
                        f"stage-4 width {c4} (embed_dims * 2**3) that feeds it")
        dims, heads = int(d.get("embed_dims", 1024)), int(d.get("num_heads", 16))
        _heads_ok(dims, heads, (*path, "num_heads"))
        return {
            "input_dims": c4, "embed_dims": dims, "num_layers": int(d.get("num_layers", 24)),
            "num_heads": heads, "mlp_ratio": float(d.get("mlp_ratio", 4)),
            "qkv_bias": bool(d.get("qkv_bias", True)), "eps": _eps(d, path),
            "drop_path_rate": float(d.get("drop_path_rate", 0.0)),
        }


def _coerce_config(config: SkySenseConfig | Mapping[str, Any] | str | None) -> SkySenseConfig:
    if config is None:
        return SkySenseConfig.preset("skysense-huge")
    if isinstance(config, str):
        return SkySenseConfig.preset(config)
    return SkySenseConfig.from_hyperparameters(config)


def _modality_specs(modalities: Sequence[str], s2_bands: Sequence[str] = SKYSENSE_S2_BANDS
                    ) -> tuple[ModalitySpec, ...]:
    idx = [SKYSENSE_S2_BANDS.index(b) for b in s2_bands]
    table = {
        "s2": ModalitySpec("s2", tuple(s2_bands), tuple(S2_MEAN[i] for i in idx),
                           tuple(S2_STD[i] for i in idx), units="dn"),
        "s1": ModalitySpec("s1", SKYSENSE_S1_BANDS, S1_MEAN, S1_STD, units="db"),
        "hr": ModalitySpec("hr", SKYSENSE_HR_BANDS, HR_MEAN, HR_STD, units="rgb255",
                           grid_factor=HR_FACTOR),
    }
    # The reference (first) modality is the Sentinel grid the output lies on.
    return tuple(table[m] for m in ("s2", "s1", "hr") if m in modalities)


# --------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------
_DESCRIPTION = ("SkySense: multi-modal (HR RGB, Sentinel-2, Sentinel-1) multi-temporal "
                "remote-sensing foundation model; per-pixel fused embeddings at 10 m")
_PAPER = ("Guo et al., SkySense: A Multi-Modal Remote Sensing Foundation Model Towards "
          "Universal Interpretation for Earth Observation Imagery, CVPR 2024 "
          "(arXiv:2312.10115)")
_LICENSE = "code: Apache-2.0 (xsky); official weights: non-commercial research only"
_WEIGHTS_NOTE = ("official SkySense checkpoints (split files " + ", ".join(SPLIT_FILES.values())
                 + ", or the full checkpoint); supply them locally, xsky does not download "
                 "them")
_SOURCE = ("official SkySense release, linked from the Jack-bo1220/SkySense README (a Notion "
           "page since 2025-09-23, before that Yuque); the links have moved and no pinned URL "
           "or sha256 is known offline. Non-commercial research use only: obtain the file "
           "yourself and pass its folder as weights=")
_VARIANT = {
    "skysense-huge": "official sizes (Swin-V2-H, ViT-L x2, 24-layer fusion; about 1.66 B "
                     "parameters); loads the official weights",
    "skysense-small": "a small variant with the official wiring and random weights, for CPU "
                      "work and tests (no released weights)",
    "skysense-tiny": "a tiny variant with the official wiring and random weights, for tests "
                     "(no released weights)",
}


def _card(preset: str) -> ModelCard:
    cfg = SkySenseConfig.preset(preset)
    spec = _fused_spec(preset, MODALITIES, 16, cfg.embed_dim, None, meta=())
    official = preset == "skysense-huge"
    weights = tuple(WeightFile(f, sha256=None, url=None, source=_SOURCE)
                    for f in SPLIT_FILES.values()) if official else ()
    extra: dict[str, Any] = {"weights": _WEIGHTS_NOTE} if official else {}
    return ModelCard.from_spec(
        spec, description=f"{_DESCRIPTION}. {preset}: {_VARIANT.get(preset, 'a preset')}",
        license=_LICENSE, paper=_PAPER, family="skysense", weights=weights, extra=extra)


def _card_meta(name: str) -> dict[str, Any]:
    card = CARDS.get(name) or CARDS["skysense-huge"]
    return card.metadata()


def _fused_spec(name: str, modalities: Sequence[str], window: int, dim: int,
                batch_size: int | None, meta: Any = None,
                s2_bands: Sequence[str] = SKYSENSE_S2_BANDS) -> ModelSpec:
    return ModelSpec(name=name, modalities=_modality_specs(modalities, s2_bands), window=window,
                     stride=1, feature_dim=dim, fuses_time=True, output="dense",
                     default_batch_size=batch_size or 16, required_modalities=(),
                     meta=_card_meta(name) if meta is None else meta)


def _check_window(window: Any) -> int:
    if not isinstance(window, int) or isinstance(window, bool) or window < 4 or window % 4:
        raise ArgumentError(f"SkySense window must be a positive multiple of the ViT patch size 4 "
                            f"(Sentinel pixels), got {window!r}; e.g. window=16")
    return window


def _check_s2_bands(bands: Any) -> tuple[str, ...]:
    if bands is None:
        return SKYSENSE_S2_BANDS
    bands = (bands,) if isinstance(bands, str) else tuple(bands)
    bad = [b for b in bands if b not in SKYSENSE_S2_BANDS]
    if bad or not bands or len(set(bands)) != len(bands):
        raise ArgumentError(f"s2_bands must be distinct bands of {SKYSENSE_S2_BANDS}, got "
                            f"{bands!r}; e.g. s2_bands=('B02', 'B03', 'B04', 'B08')")
    return bands


def _check_modalities(modalities: Any) -> tuple[str, ...]:
    if isinstance(modalities, str):
        modalities = (modalities,)
    mods = tuple(dict.fromkeys(modalities))
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise ArgumentError(f"SkySense modalities must be a non-empty subset of {MODALITIES}, got "
                            f"{modalities!r}")
    return mods


# --------------------------------------------------------------------------------------
# Loading the official weights
# --------------------------------------------------------------------------------------
# The load report is the shared one (xsky.models._checkpoint.LoadReport); SkySense fills
# every field: ``skipped`` holds pretraining heads, ``mask_token``, duplicate ``ctpe`` copies,
# branches the model does not build and unused Swin out-norms; ``rebuilt`` the Swin
# ``relative_coords_table``/``relative_position_index`` buffers (always rebuilt from the window
# size); ``defaulted`` the intermediate Swin out-norms absent from the files (LayerNorm
# defaults; the fused output does not use them); ``resized`` position embeddings stored for
# another grid.
_summarise = summarise_keys


def _read(path: Path, trust: bool) -> Any:
    """One official file, checked against the model card's sha256 when it knows one."""
    return load_checkpoint(path, trust=trust, sha256=CARDS["skysense-huge"].expected_sha256(path))


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        # Non-tensor entries (training metadata) are not weights.
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    what = (f"a single tensor of shape {tuple(obj.shape)}" if isinstance(obj, torch.Tensor)
            else f"a {type(obj).__name__}" if not isinstance(obj, Mapping)
            else "a mapping without tensors")
    raise CheckpointError(f"{str(path)!r} holds {what}, not a state dict: expected a mapping of "
                          "tensors or {'model': {...}} (the official full checkpoint); pass the "
                          "official SkySense .pth file(s)")


def _strip(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _canonical_from_split(directory: Path, parts: set[str], need_ctpe: bool, trust: bool,
                          report: LoadReport) -> dict[str, torch.Tensor]:
    missing_files = [SPLIT_FILES[p] for p in sorted(parts) if p in SPLIT_FILES
                     and not (directory / SPLIT_FILES[p]).is_file()]
    if missing_files:
        raise CheckpointError(
            f"directory {str(directory)!r} lacks the SkySense weight file(s) "
            f"{format_choices(missing_files)} needed by the modalities this model builds; add "
            "them, pass the full checkpoint file instead, or build fewer modalities "
            "(e.g. modalities=('s2', 's1'))")
    out: dict[str, torch.Tensor] = {}
    ctpe: list[tuple[str, torch.Tensor]] = []
    # The S2 file first: ctpe is taken from the first file that has it.
    order = ["backbone_s2", "backbone_s1", "backbone_gep", "head_s2", "head_s1", "fusion"]
    for part in order:
        fname = SPLIT_FILES[part]
        fpath = directory / fname
        if part not in parts:
            if need_ctpe and not ctpe and part.startswith("backbone") and fpath.is_file():
                sd = _unwrap(_read(fpath, trust), fpath)
                if "ctpe" in sd:
                    ctpe.append((fname, sd["ctpe"]))
            continue
        sd = _unwrap(_read(fpath, trust), fpath)
        for key, value in sd.items():
            k = _strip(key)
            if k == "ctpe":
                ctpe.append((fname, value))
            elif k == "mask_token":
                report.skipped.append(f"{fname}:{key}")
            else:
                out[f"{part}.{k}"] = value
    if ctpe:
        out["ctpe"] = ctpe[0][1]
        report.skipped.extend(f"{f}:ctpe (duplicate)" for f, _ in ctpe[1:])
    return out


_FULL_PREFIXES = ("backbone_gep.", "backbone_s2.", "backbone_s1.", "head_s2.", "head_s1.",
                  "fusion.")


def _canonical_from_full(path: Path, trust: bool, report: LoadReport) -> dict[str, torch.Tensor]:
    sd = _unwrap(_read(path, trust), path)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k == "ctpe" or (k.startswith(_FULL_PREFIXES) and not k.endswith(".mask_token")):
            out[k] = value
        else:
            # Pretraining-only parts (head_gep*, projection heads, mask_token, ...).
            report.skipped.append(k)
    if not any(k.startswith(_FULL_PREFIXES) for k in out):
        raise CheckpointError(
            f"{str(path)!r} is not a SkySense checkpoint: none of its keys start with "
            f"{format_choices(_FULL_PREFIXES)}; for the split files pass their directory")
    return out


def checkpoint_filter_fn(path: Path, model: nn.Module, report: LoadReport, *, trust: bool
                         ) -> dict[str, torch.Tensor]:
    """The SkySense checkpoint filter: official split files (a directory) or the full
    checkpoint (a file), mapped to the key names of ``model`` (the full checkpoint's)."""
    parts: set[str] = model._official_parts()  # type: ignore[operator]
    if path.is_dir():
        return _canonical_from_split(path, parts, "ctpe" in parts, trust, report)
    if path.is_file():
        return _canonical_from_full(path, trust, report)
    raise CheckpointError(f"SkySense weights {str(path)!r} do not exist; pass the directory of "
                          "the six official .pth files or the full checkpoint file")


def _load_official(model: nn.Module, path: str | os.PathLike[str], *, strict: bool,
                   trust: bool) -> LoadReport:
    """Load official weights into a SkySense model; see :meth:`SkySense.load_official`."""
    p = Path(path).expanduser()
    report = LoadReport(source=str(p), what="SkySense weights")
    canon = checkpoint_filter_fn(p, model, report, trust=trust)
    own_keys = set(model.state_dict())
    uses: Any = model._uses_key
    last_norm = f"backbone_gep.norm{getattr(model, '_last_stage', -1)}."
    use_ctpe = getattr(model, "use_ctpe", True)

    def classify(key: str) -> str | None:
        if key.rsplit(".", 1)[-1] in ("relative_coords_table", "relative_position_index"):
            return "rebuilt"
        if not uses(key):
            return "skipped"
        if key not in own_keys and key.startswith("backbone_gep.norm"):
            return "skipped"  # out-norm of a stage not configured
        return None

    def adapt(key: str, value: torch.Tensor, own: torch.Tensor) -> torch.Tensor | None:
        if key.rsplit(".", 1)[-1] == "pos_embed" and value.ndim == 3 \
                and value.shape[-1] == own.shape[-1]:
            return _resize_stored_pos(model, key, value)
        return None

    def optional(key: str) -> bool:
        out_norm = key.startswith("backbone_gep.norm") and not key.startswith(last_norm)
        return out_norm or (key == "ctpe" and not use_ctpe)

    own = model.state_dict()
    apply_state(
        model, canon, report=report, strict=strict, classify=classify, adapt=adapt,
        optional=optional,
        fix=("Check the files and hyperparameters, or pass strict=False to keep the initial "
             "values of missing weights and skip unexpected keys."),
        shape_fix=("The hyperparameters do not match these weights; pass the ones they were "
                   "trained with (hyperparameters=...)"))
    with torch.no_grad():
        for key in report.defaulted:
            t = own[key]
            t.copy_(torch.ones_like(t) if key.endswith(".weight") else torch.zeros_like(t))
    return report


def _resize_stored_pos(model: nn.Module, key: str, value: torch.Tensor) -> torch.Tensor:
    vit = model.get_submodule(key.rsplit(".", 1)[0])
    n = value.shape[1] - 1
    side = round(n**0.5)
    if side * side != n:
        raise CheckpointError(f"{key}: stored position embedding {tuple(value.shape)} is not a "
                              "square grid plus CLS; cannot resize it")
    with torch.no_grad():
        return resize_pos_embed(value.float(), vit.pos_grid, (side, side),  # type: ignore[arg-type]
                                vit.interpolate_mode).to(value.dtype)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------
def _build_vit(cfg: dict[str, Any]) -> VisionTransformer:
    return VisionTransformer(**cfg)


def _as_doy(doy: Any, b: int, t: int, name: str, calendar_time: int) -> torch.Tensor:
    d = torch.as_tensor(doy)
    if d.dtype.is_floating_point or d.dtype == torch.bool:
        raise DataError(f"{name} must hold integer days of year, got dtype {d.dtype}")
    if tuple(d.shape) != (b, t):
        raise DimensionError(f"{name} has shape {tuple(d.shape)}; expected (batch, dates) = "
                             f"{(b, t)}, one day of year per date")
    if d.numel() and (int(d.min()) < 1 or int(d.max()) > 366):
        raise DataError(f"{name} holds days of year outside 1..366 (min {int(d.min())}, max "
                        f"{int(d.max())}); pass day-of-year numbers, e.g. time.dt.dayofyear")
    # ctpe has calendar_time rows: day 366 of a leap year reuses the last one.
    return d.long().clamp(max=calendar_time) - 1


def _check_sat(x: torch.Tensor, name: str, channels: int) -> tuple[int, int, int, int]:
    if x.ndim != 5 or x.shape[1] != channels:
        raise DimensionError(f"{name} has shape {tuple(x.shape)}; expected (batch, {channels} "
                             "bands, dates, height, width) as in the official layout")
    b, _, t, h, w = x.shape
    if h % 4 or w % 4:
        raise DimensionError(f"{name} is {h}x{w} pixels; height and width must be multiples "
                             "of the ViT patch size 4")
    return b, t, h, w


class SkySense(EmbeddingModel):
    """SkySense: HR Swin-V2 + Sentinel-2/-1 ViTs + per-pixel temporal fusion.

    Parameters
    ----------
    config
        Sizes: a preset name (``"skysense-huge"``, default), official ``hyperparameters``
        (a mapping, e.g. the fixture's ``config.json``) or a :class:`SkySenseConfig`.
    window
        Engine window on the Sentinel-2 grid, in pixels (multiple of 4; HR windows are
        ``32 * window`` px and need ``window >= 8``). Only the engine uses it.
    modalities
        Branches to build (any non-empty subset of ``("hr", "s2", "s1")``).
    use_ctpe
        Add the date encoding ``ctpe[doy - 1]`` to Sentinel-2 tokens (SkySense++ ships
        without it; the conformance fixture has both).
    s2_bands
        Sentinel-2 bands the S2 branch takes (default the official ten); a subset such as
        ``("B02", "B03", "B04", "B08")`` builds a narrower patch embedding, for models
        trained with :mod:`xsky.train` on cubes that have only those bands (official weights
        need all ten).
    name
        Name in the spec.
    batch_size
        Default windows per forward pass in the engine.

    Notes
    -----
    Submodules carry the official names so the state dict is the full checkpoint's layout:
    ``backbone_gep`` (HR Swin; "gep" is the official prefix), ``backbone_s2``,
    ``backbone_s1``, ``head_s2``, ``head_s1``, ``fusion`` and ``ctpe``.

    Examples
    --------
    >>> import torch
    >>> from xsky.models.skysense import SkySense
    >>> model = SkySense("skysense-tiny").eval()
    >>> s2 = torch.randn(1, 10, 3, 8, 8)                 # (B, bands, dates, h, w)
    >>> model(s2=s2, s2_doy=torch.tensor([[10, 120, 300]])).shape
    torch.Size([1, 96, 8, 8])
    """

    def __init__(self, config: SkySenseConfig | Mapping[str, Any] | str | None = None, *,
                 window: int = 16, modalities: Sequence[str] = MODALITIES,
                 use_ctpe: bool = True, name: str = "skysense",
                 batch_size: int | None = None, s2_bands: Sequence[str] | None = None
                 ) -> None:
        super().__init__()
        cfg = _coerce_config(config)
        self.s2_bands = _check_s2_bands(s2_bands)
        if len(self.s2_bands) != cfg.vit_s2["in_channels"]:
            cfg = dataclasses.replace(cfg, vit_s2={**cfg.vit_s2,
                                                   "in_channels": len(self.s2_bands)})
        self.config = cfg
        self.modalities = _check_modalities(modalities)
        self.window = _check_window(window)
        self.use_ctpe = bool(use_ctpe) and cfg.use_ctpe
        c4 = cfg.c4
        self._last_stage = len(cfg.swin["depths"]) - 1
        self.backbone_gep = (SwinTransformerV2(**cfg.swin) if "hr" in self.modalities
                             else None)
        self.backbone_s2 = _build_vit(cfg.vit_s2) if "s2" in self.modalities else None
        self.backbone_s1 = _build_vit(cfg.vit_s1) if "s1" in self.modalities else None
        self.head_s2 = (UPHead(cfg.vit_s2["embed_dims"], c4, cfg.up_scale)
                        if "s2" in self.modalities else None)
        self.head_s1 = (UPHead(cfg.vit_s1["embed_dims"], c4, cfg.up_scale)
                        if "s1" in self.modalities else None)
        self.fusion = FusionEncoder(**cfg.fusion)
        self.ctpe = (nn.Parameter(torch.zeros(1, cfg.calendar_time, c4))
                     if "s2" in self.modalities else None)
        self.load_report: LoadReport | None = None
        self.spec = _fused_spec(name, self.modalities, self.window, cfg.embed_dim, batch_size,
                                s2_bands=self.s2_bands)

    # ---- loading ------------------------------------------------------------------------
    @classmethod
    def from_official(cls, path: str | os.PathLike[str],
                      hyperparameters: SkySenseConfig | Mapping[str, Any] | str | None = None,
                      *, strict: bool = True, trust: bool = False, **kwargs: Any) -> SkySense:
        """Build a model and load the official SkySense weights.

        Parameters
        ----------
        path
            A directory holding the official split files (:data:`SPLIT_FILES`) or one full
            checkpoint file (``{'model': {...}}`` with ``backbone_gep.``, ``backbone_s2.``,
            ``backbone_s1.``, ``head_s2.``, ``head_s1.``, ``fusion.`` keys and ``ctpe``).
        hyperparameters
            Sizes the weights were trained with (official argument names), a preset name, or
            None: the ``hyperparameters`` of a ``config.json`` in the directory if there is
            one, else ``"skysense-huge"`` (the released model).
        strict
            Raise :class:`~xsky.exceptions.CheckpointError` when a required weight is missing
            or a used module has unexpected keys (the error lists them).
        trust
            Allow full unpickling of files that need it (only for files you trust).
        **kwargs
            Passed to :class:`SkySense` (``window``, ``modalities``, ``use_ctpe``, ...).

        Returns
        -------
        SkySense
            In eval mode; ``model.load_report`` says what was loaded, skipped or rebuilt.
        """
        return _from_official(cls, path, hyperparameters, strict, trust, kwargs)

    def load_official(self, path: str | os.PathLike[str], *, strict: bool = True,
                      trust: bool = False) -> LoadReport:
        """Load official weights into this model (see :meth:`from_official`).

        Accepts head/fusion files with or without a ``backbone.`` prefix, Swin files with or
        without the ``relative_*`` buffers (always rebuilt), only ``norm3`` or all four
        out-norms, ``ctpe`` in any backbone file, extra pretraining keys (skipped), and a
        position embedding stored for another grid (resized bicubically, as mmseg does).

        Returns
        -------
        LoadReport
            Also kept as ``self.load_report``.
        """
        self.load_report = _load_official(self, path, strict=strict, trust=trust)
        return self.load_report

    def _official_parts(self) -> set[str]:
        parts = {"fusion"}
        for m in self.modalities:
            parts.add(_BACKBONE[m])
            if m != "hr":
                parts.add(f"head_{m}")
        if "s2" in self.modalities:
            parts.add("ctpe")
        return parts

    def _uses_key(self, key: str) -> bool:
        return key.split(".", 1)[0] in self._official_parts()

    # ---- branches -----------------------------------------------------------------------
    def _run_hr(self, hr: torch.Tensor) -> list[torch.Tensor]:
        if self.backbone_gep is None:
            raise ArgumentError("this SkySense model was built without the 'hr' branch; build it "
                                "with modalities including 'hr'")
        return self.backbone_gep(hr)

    def _run_sat(self, mod: str, x: torch.Tensor, return_layers: bool = False
                 ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """ViT + UPHead over images ``x`` (n, C, h, w) (dates already folded into batch)."""
        vit = getattr(self, f"backbone_{mod}")
        if vit is None:
            raise ArgumentError(f"this SkySense model was built without the {mod!r} branch; build "
                                f"it with modalities including {mod!r}")
        if return_layers:
            feats, layers = vit(x, return_layers=True)
        else:
            feats, layers = vit(x), []
        return feats, layers, getattr(self, f"head_{mod}")(feats)

    def _date_code(self, doy_index: torch.Tensor) -> torch.Tensor:
        """``ctpe`` rows (..., C4) for zero-based day indices."""
        assert self.ctpe is not None  # only called when S2 (and so ctpe) is present
        return self.ctpe[0, doy_index]

    # ---- official-layout forward --------------------------------------------------------
    def forward_features(self, hr: torch.Tensor | None = None, s2: torch.Tensor | None = None,
                         s1: torch.Tensor | None = None, s2_doy: Any = None,
                         s1_doy: Any = None, *, return_layers: bool = False
                         ) -> dict[str, Any]:
        """Every intermediate output, in the official layouts.

        Parameters
        ----------
        hr
            (B, 3, 32h, 32w) normalised RGB, or None.
        s2, s1
            (B, 10, T2, h, w) / (B, 2, T1, h, w) normalised Sentinel-2 / -1, or None
            (channels before time, as in the official code).
        s2_doy, s1_doy
            Day of year (B, T) (1..366; 366 uses the last ``ctpe`` row). ``s2_doy=None``
            (or ``use_ctpe=False``) skips the date encoding; ``s1_doy`` is accepted for
            symmetry (SkySense encodes dates of S2 tokens only).
        return_layers
            Also return every ViT layer (``s2_vit_layers``/``s1_vit_layers``).

        Returns
        -------
        dict
            ``hr_stages`` (list of (B, C_i, H_i, W_i)), ``s2_vit``/``s1_vit``
            ((B*T, D_vit, h/4, w/4), date ``t`` of sample ``b`` at index ``b*T + t``),
            ``s2_head``/``s1_head`` ((B*T, C4, h, w)) and ``fused`` ((B, D, h, w)); keys of
            absent modalities are missing.
        """
        if hr is None and s2 is None and s1 is None:
            raise ArgumentError("SkySense needs at least one of hr, s2, s1")
        out: dict[str, Any] = {}
        grid: tuple[int, int, int] | None = None
        seqs: list[torch.Tensor] = []  # projected tokens (B, h, w, L_m, D)
        proj = self.fusion.porj_linear
        if hr is not None:
            if hr.ndim != 4 or hr.shape[1] != len(HR_BANDS):
                raise DimensionError(f"hr has shape {tuple(hr.shape)}; expected (batch, 3, H, W)")
            stages = self._run_hr(hr)
            out["hr_stages"] = stages
            top = stages[-1]  # (B, C4, H/32, W/32)
            grid = (top.shape[0], top.shape[2], top.shape[3])
            seqs.append(proj(top.permute(0, 2, 3, 1)[:, :, :, None]))
        for mod, x, doy in (("s2", s2, s2_doy), ("s1", s1, s1_doy)):
            if x is None:
                continue
            b, t, h, w = _check_sat(x, mod, self.config.vit_s2["in_channels"] if mod == "s2"
                                    else 2)
            if grid is not None and grid != (b, h, w):
                raise DimensionError(
                    f"{mod} grid (batch {b}, {h}x{w}) does not match the other inputs "
                    f"(batch {grid[0]}, {grid[1]}x{grid[2]}); HR must be exactly 32x the "
                    "Sentinel grid (H = 32h, W = 32w) and all inputs must share it")
            grid = (b, h, w)
            feats, layers, head = self._run_sat(
                mod, x.permute(0, 2, 1, 3, 4).reshape(b * t, x.shape[1], h, w), return_layers)
            out[f"{mod}_vit"], out[f"{mod}_head"] = feats, head
            if return_layers:
                out[f"{mod}_vit_layers"] = layers
            tok = head.view(b, t, -1, h, w).permute(0, 3, 4, 1, 2)  # (B, h, w, T, C4)
            if mod == "s2" and doy is not None and self.use_ctpe:
                idx = _as_doy(doy, b, t, "s2_doy", self.config.calendar_time).to(x.device)
                tok = tok + self._date_code(idx)[:, None, None]
            elif doy is not None:
                _as_doy(doy, b, t, f"{mod}_doy", self.config.calendar_time)
            seqs.append(proj(tok))
        assert grid is not None
        b, h, w = grid
        tokens = torch.cat(seqs, dim=3).reshape(b * h * w, -1, self.config.embed_dim)
        fused = self.fusion.encode(tokens)
        out["fused"] = fused.view(b, h, w, -1).permute(0, 3, 1, 2)
        return out

    def forward(self, hr: torch.Tensor | None = None, s2: torch.Tensor | None = None,
                s1: torch.Tensor | None = None, s2_doy: Any = None, s1_doy: Any = None
                ) -> torch.Tensor:
        """Fused features (B, D, h, w); inputs as in :meth:`forward_features`."""
        return self.forward_features(hr, s2, s1, s2_doy, s1_doy)["fused"]

    # ---- engine entry point -------------------------------------------------------------
    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Fused embeddings of engine windows, with per-pixel masking of invalid dates.

        Parameters
        ----------
        inputs
            Any non-empty subset of: ``"s2"`` (N, 10, T2, W, W), ``"s1"`` (N, 2, T1, W, W),
            ``"hr"`` (N, 3, T_hr, 32W, 32W), normalised with invalid pixels filled with 0;
            ``<mod>_valid`` bool (N, T, W', W') and ``<mod>_doy`` int (N, T) for each.
            Each HR date is one HR token.

        Returns
        -------
        torch.Tensor
            (N, D, W, W). A (pixel, date) token is left out of the fusion attention when
            its pixel is invalid on that date (HR: when the whole 32x32 block of the pixel
            is invalid); a pixel with no valid token is NaN. Dates invalid over a whole
            window are not computed at all.
        """
        per_mod, (n, w) = self.window_tokens(inputs)
        tokens = torch.cat([tok for tok, _ in per_mod.values()], dim=1)
        key_mask = torch.cat([keep for _, keep in per_mod.values()], dim=1)
        fused = self.fusion.encode(tokens, key_mask)
        fused = fused.masked_fill(~key_mask.any(1, keepdim=True), float("nan"))
        return fused.view(n, w, w, -1).permute(0, 3, 1, 2)

    def window_tokens(self, inputs: Mapping[str, torch.Tensor]
                      ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], tuple[int, int]]:
        """The fusion's input tokens of engine windows, per modality, before fusion.

        Parameters
        ----------
        inputs
            As for :meth:`embed_windows`.

        Returns
        -------
        tokens : dict
            Per present modality (in the fusion's order), the projected tokens
            ``(N*W*W, T, D)`` (pixel-major, dates in order) and their validity
            ``(N*W*W, T)``; :meth:`embed_windows` concatenates them over modalities and
            fuses them, training (:func:`xsky.train.encode`) also pools each modality.
        geometry : tuple of int
            ``(N, W)``: windows and their size on the Sentinel grid.
        """
        present = [m for m in MODALITIES if inputs.get(m) is not None]
        if not present:
            raise ArgumentError(f"SkySense got none of its modalities {self.modalities}; pass at "
                                f"least one of them (inputs had {sorted(inputs)})")
        absent = [m for m in present if m not in self.modalities]
        if absent:
            raise ArgumentError(f"this SkySense model was built for {self.modalities}, not "
                                f"{absent}; build it with those modalities or drop them")
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        geom: tuple[int, int] | None = None
        for mod in present:
            x = inputs[mod]
            if x.ndim != 5:
                raise DimensionError(f"inputs[{mod!r}] has shape {tuple(x.shape)}; expected "
                                     "(windows, bands, dates, y, x)")
            n, _, t = x.shape[:3]
            w = x.shape[-1] // (HR_FACTOR if mod == "hr" else 1)
            if geom is not None and geom != (n, w):
                raise DimensionError(f"inputs[{mod!r}] covers {n} windows of {w} px; other "
                                     f"modalities cover {geom[0]} windows of {geom[1]} px")
            geom = (n, w)
            valid = inputs.get(f"{mod}_valid")
            if valid is None:
                valid = torch.ones((n, t, *x.shape[-2:]), dtype=torch.bool, device=x.device)
            if mod == "hr":
                tok_valid = valid.view(n, t, w, HR_FACTOR, w, HR_FACTOR).any(5).any(3)
            else:
                tok_valid = valid.bool()
            out[mod] = self._window_tokens(mod, x, tok_valid, inputs.get(f"{mod}_doy"))
        assert geom is not None
        return out, geom

    def _window_tokens(self, mod: str, x: torch.Tensor, valid: torch.Tensor, doy: Any
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected tokens (N*W*W, T, D) and their validity (N*W*W, T) for one modality."""
        n, c, t = x.shape[:3]
        d = self.config.embed_dim
        w = valid.shape[-1]
        keep = valid.permute(0, 2, 3, 1).reshape(n * w * w, t)
        images = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, *x.shape[-2:])
        used = valid.reshape(n * t, -1).any(1)
        sel = None if bool(used.all()) else used.nonzero().squeeze(1)
        if sel is not None:
            images = images[sel]
        if mod == "hr":
            top = self._run_hr(images)[-1] if images.shape[0] else None
        else:
            top = self._run_sat(mod, images)[2] if images.shape[0] else None
        if top is None:  # no valid date anywhere: all tokens are masked out
            out = x.new_zeros(n * t, w, w, d)
        else:
            tok = top.permute(0, 2, 3, 1)  # (n_sel, W, W, C4)
            if mod == "s2" and doy is not None and self.use_ctpe:
                idx = _as_doy(doy, n, t, "s2_doy", self.config.calendar_time).to(x.device)
                idx = idx.reshape(-1) if sel is None else idx.reshape(-1)[sel]
                tok = tok + self._date_code(idx)[:, None, None]
            tok = self.fusion.porj_linear(tok)
            if sel is None:
                out = tok
            else:
                # Tokens of skipped dates stay 0; the key mask keeps them out of attention.
                out = tok.new_zeros(n * t, w, w, d)
                out[sel] = tok
        out = out.reshape(n, t, w, w, d).permute(0, 2, 3, 1, 4).reshape(n * w * w, t, d)
        return out, keep


class SkySensePerDate(EmbeddingModel):
    """Per-date SkySense features of one Sentinel modality, on its 10 m grid.

    Each date goes through the modality's ViT and UPHead (back to 10 m, in the Swin stage-4
    width C4), then through the fusion input projection ``porj_linear`` (C4 -> D): the
    features live in the space the fusion transformer reads, one D-vector per pixel and
    date, without temporal fusion or date encoding.

    Parameters
    ----------
    config
        As for :class:`SkySense`.
    modality
        ``"s2"`` or ``"s1"``.
    window, name, batch_size
        As for :class:`SkySense`.
    """

    def __init__(self, config: SkySenseConfig | Mapping[str, Any] | str | None = None, *,
                 modality: str = "s2", window: int = 16, name: str = "skysense-per-date",
                 batch_size: int | None = None) -> None:
        super().__init__()
        if modality not in ("s2", "s1"):
            raise ArgumentError(f"per-date SkySense takes modality 's2' or 's1', got {modality!r}")
        self.config = cfg = _coerce_config(config)
        self.modality = modality
        self.window = _check_window(window)
        vit_cfg = cfg.vit_s2 if modality == "s2" else cfg.vit_s1
        self.add_module(f"backbone_{modality}", _build_vit(vit_cfg))
        self.add_module(f"head_{modality}", UPHead(vit_cfg["embed_dims"], cfg.c4, cfg.up_scale))
        self.fusion = nn.Module()
        self.fusion.porj_linear = nn.Linear(cfg.c4, cfg.embed_dim)
        self.load_report: LoadReport | None = None
        self.spec = ModelSpec(
            name=name, modalities=_modality_specs((modality,)), window=self.window, stride=1,
            feature_dim=cfg.embed_dim, fuses_time=False, output="dense",
            default_batch_size=batch_size or 32, meta=_card_meta(name))

    @classmethod
    def from_official(cls, path: str | os.PathLike[str],
                      hyperparameters: SkySenseConfig | Mapping[str, Any] | str | None = None,
                      *, strict: bool = True, trust: bool = False, **kwargs: Any
                      ) -> SkySensePerDate:
        """Build and load official weights (the modality's backbone and head files and the
        fusion file); see :meth:`SkySense.from_official`."""
        return _from_official(cls, path, hyperparameters, strict, trust, kwargs)

    def load_official(self, path: str | os.PathLike[str], *, strict: bool = True,
                      trust: bool = False) -> LoadReport:
        """Load official weights; the fusion layers, other branches and ``ctpe`` are skipped."""
        self.load_report = _load_official(self, path, strict=strict, trust=trust)
        return self.load_report

    def _official_parts(self) -> set[str]:
        return {f"backbone_{self.modality}", f"head_{self.modality}", "fusion"}

    def _uses_key(self, key: str) -> bool:
        part = key.split(".", 1)[0]
        if part == "fusion":
            return key.startswith("fusion.porj_linear.")
        return part in self._official_parts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, D, h, w) of normalised images ``x`` (B, C, h, w)."""
        backbone: Any = getattr(self, f"backbone_{self.modality}")
        head_module: Any = getattr(self, f"head_{self.modality}")
        head = head_module(backbone(x))
        fusion: Any = self.fusion
        return fusion.porj_linear(head.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = inputs.get(self.modality)
        if x is None:
            raise ArgumentError(f"per-date SkySense ({self.modality}) got no {self.modality!r} "
                                f"input (inputs had {sorted(inputs)})")
        if x.ndim != 4:
            raise DimensionError(f"inputs[{self.modality!r}] has shape {tuple(x.shape)}; "
                                 "expected (windows, bands, y, x)")
        return self(x)


def _from_official(cls: Any, path: str | os.PathLike[str], hyperparameters: Any, strict: bool,
                   trust: bool, kwargs: Mapping[str, Any]) -> Any:
    """Build ``cls`` with the weights' sizes (``config.json`` beside them by default), load
    the official weights, and return it in eval mode."""
    if hyperparameters is None:
        hyperparameters = _config_beside(path)
    model = cls(hyperparameters, **kwargs)
    model.load_official(path, strict=strict, trust=trust)
    return model.eval()


def _read_hyperparameters(path: str | os.PathLike[str]) -> Any:
    """The JSON of a ``hyperparameters=`` file (a whole config.json or the mapping)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ArgumentError(
            f"hyperparameters={str(path)!r} is neither a SkySense preset "
            f"({format_choices(SKYSENSE_PRESETS)}) nor an existing JSON file; pass a preset "
            "name, the path of the official config.json, or a mapping"
        )
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(
            f"hyperparameters file {str(p)!r} is not valid JSON ({err}); pass the official "
            "config.json (a JSON object, optionally under a 'hyperparameters' key)"
        ) from None


def _config_beside(path: str | os.PathLike[str]) -> Mapping[str, Any] | str:
    p = Path(path).expanduser()
    cfg = (p if p.is_dir() else p.parent) / "config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"could not read {str(cfg)!r} beside the weights: it is not valid JSON ({err}); "
                "fix or remove it, or pass hyperparameters= explicitly"
            ) from err
        if isinstance(data, Mapping) and isinstance(data.get("hyperparameters"), Mapping):
            return data["hyperparameters"]
    return "skysense-huge"


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
_OVERRIDES = ("window", "temporal", "modality", "modalities", "use_ctpe", "strict",
              "batch_size", "trust", "hyperparameters", "s2_bands")


def _factory(preset: str) -> Any:
    def create(weights: str | None = None, *, window: int = 16, temporal: str = "fused",
               modality: str | None = None, modalities: Sequence[str] = MODALITIES,
               use_ctpe: bool = True, strict: bool = True, batch_size: int | None = None,
               trust: bool = False, hyperparameters: Any = None,
               s2_bands: Sequence[str] | None = None, **unknown: Any) -> EmbeddingModel:
        if unknown:
            raise ArgumentError(f"{preset} takes no option(s) {format_choices(unknown)}; valid "
                                f"options: {format_choices(_OVERRIDES)}")
        # sizes: the preset, or the official hyperparameters (a mapping, a config.json path,
        # or "beside" for the config.json next to the weights)
        if hyperparameters is None:
            cfg = SkySenseConfig.preset(preset)
        else:
            if hyperparameters == "beside":
                if weights is None:
                    raise ArgumentError("hyperparameters='beside' needs weights= (a folder or file "
                                        "with a config.json beside it)")
                hyperparameters = _config_beside(weights)
            elif isinstance(hyperparameters, (str, os.PathLike)) and (
                    Path(hyperparameters).expanduser().is_file()
                    or hyperparameters not in SKYSENSE_PRESETS):
                hyperparameters = _read_hyperparameters(hyperparameters)
            cfg = _coerce_config(hyperparameters)
        model: SkySense | SkySensePerDate
        if temporal == "fused":
            if modality is not None:
                modalities = (modality,)
            model = SkySense(cfg, window=window, modalities=modalities, use_ctpe=use_ctpe,
                             name=preset, batch_size=batch_size, s2_bands=s2_bands)
        elif temporal == "per-date":
            if s2_bands is not None:
                raise ArgumentError("s2_bands applies to temporal='fused' SkySense only")
            model = SkySensePerDate(cfg, modality=modality or "s2", window=window,
                                    name=preset, batch_size=batch_size)
        else:
            raise ArgumentError(f"temporal must be 'fused' or 'per-date', got {temporal!r}")
        if weights is not None:
            model.load_official(weights, strict=strict, trust=trust)
        return model

    create.__name__ = f"create_{preset.replace('-', '_')}"
    create.__doc__ = (f"SkySense preset {preset!r}; options: window, temporal ('fused' | "
                      "'per-date'), modality, modalities, use_ctpe, strict, batch_size, trust, s2_bands, "
                      "hyperparameters (official config: mapping, config.json path or "
                      "'beside' the weights).")
    return create


#: Model cards of the presets, by registry name.
CARDS: dict[str, ModelCard] = {name: _card(name) for name in SKYSENSE_PRESETS}

for _name in SKYSENSE_PRESETS:
    register_model(_name, _factory(_name),
                   spec=_fused_spec(_name, MODALITIES, 16,
                                    SkySenseConfig.preset(_name).embed_dim, None),
                   card=CARDS[_name])
