"""``default`` (also ``xsky-s2-tiny``): xsky's own pretrained encoder, shipped in the package.

A ``skysense-tiny`` (the official SkySense wiring at a small size) whose Sentinel-2 branch
takes the four bands most cubes have, B02, B03, B04 and B08, pretrained with
:mod:`xsky.train` (multi-granularity self-distillation and geo-context prototypes) on the
embedded Romania sample by the recipe ``xsky/train/recipes/default.toml``. It runs anywhere
without a download and gives real (if modest) embeddings of Sentinel-2 time series: see
``benchmarks/pretrain_probe.py`` for what it is worth against random weights, Galileo and
Presto.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import Any, cast

import torch

from ..exceptions import ArgumentError, format_choices
from ._checkpoint import load_weights
from ._registry import register_model
from .card import ModelCard, WeightFile
from .skysense import SkySense, SkySenseConfig, _fused_spec

__all__ = ["BANDS", "CARD", "CARDS", "WEIGHTS_FILE", "WEIGHTS_SHA256", "DefaultSkySense",
           "create_default", "weights_path"]

#: The Sentinel-2 bands the shipped encoder takes.
BANDS = ("B02", "B03", "B04", "B08")
#: The packaged weights (safetensors, the teacher encoder at the recipe's last step).
WEIGHTS_FILE = "xsky-s2-tiny.safetensors"
#: Their sha256, checked on every load.
WEIGHTS_SHA256 = "af6d6c555cb6ce44441537c0e09218f7388dcfdc5898a909df742edf4f146591"
_PRESET = "skysense-tiny"
_WINDOW = 8
_NAME = "xsky-s2-tiny"
_OPTIONS = ("window", "batch_size", "strict")
_PATCH = 4  # the ViT patch size of the S2 branch


def weights_path() -> Path:
    """Where the packaged weights are."""
    return Path(str(resources.files("xsky") / "data" / WEIGHTS_FILE))


def _spec(name: str, window: int = _WINDOW, batch_size: int | None = None, meta: Any = None
          ) -> Any:
    return _fused_spec(name, ("s2",), window, SkySenseConfig.preset(_PRESET).embed_dim,
                       batch_size, meta=meta, s2_bands=BANDS)


def _card(name: str) -> ModelCard:
    return ModelCard.from_spec(
        _spec(name, meta=()),
        description=("xsky's default encoder: skysense-tiny wiring (ViT + UPHead + per-pixel "
                     "temporal fusion with date encoding) for Sentinel-2 B02/B03/B04/B08 time "
                     "series at 10 m, pretrained with xsky.train (self-distillation at pixel, "
                     "object and image level and geo-context prototypes) on the embedded "
                     "Romania Sentinel-2 sample; recipe xsky/train/recipes/default.toml"
                     + ("" if name == _NAME else f"; the same model as {_NAME!r}")),
        license=("code Apache-2.0; weights trained on the Romania sample (EUPL-1.2, nrt 0.2.1 "
                 "by the EC JRC; contains modified Copernicus Sentinel data 2015-2021), "
                 "shipped with that notice (xsky/data/NOTICE_romania.md)"),
        family="xsky",
        weights=(WeightFile(WEIGHTS_FILE, sha256=WEIGHTS_SHA256, url=None,
                            source="packaged with xsky (xsky/data); made by "
                                   "xsky/train/recipes/default.toml"),),
    )


#: Model cards by registry name.
CARDS = {name: _card(name) for name in (_NAME, "default")}
CARD = CARDS[_NAME]


class DefaultSkySense(SkySense):
    """The default encoder: SkySense with a fitted per-patch-position offset removed.

    The UPHead turns each 4 x 4 px ViT patch token back into 16 pixels with a transposed
    convolution, so every pixel's feature carries a term that depends only on its position
    inside the patch. After the recipe's pretraining that term held 97 % of the embedding's
    variance (the PCA quick-look was a 4-px checkerboard). ``position_offsets`` (D, 4, 4),
    the mean embedding at each in-patch position minus the overall mean, fitted on the
    pretraining split (``xsky/train/recipes/fit_position_offsets.py``), is subtracted from
    every output pixel: the position share falls to about 5 %. Windows start on the patch
    grid, so a pixel's in-patch position is its position in the window modulo 4.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("position_offsets",
                             torch.zeros(self.config.embed_dim, _PATCH, _PATCH))

    def embed_windows(self, inputs: Any) -> torch.Tensor:
        y = super().embed_windows(inputs)
        reps = (y.shape[-2] // _PATCH, y.shape[-1] // _PATCH)
        offsets = cast(torch.Tensor, self.position_offsets)
        return y - offsets.to(y.dtype).repeat(1, *reps)[None]


def create_default(weights: str | None = None, *, window: int = _WINDOW,
                   batch_size: int | None = None, strict: bool = True, name: str = _NAME,
                   **unknown: Any) -> DefaultSkySense:
    """xsky's pretrained default encoder (Sentinel-2 B02/B03/B04/B08 time series).

    ``weights``: another file of the same architecture (e.g. your own run of the recipe,
    ``runs/default/xsky-s2-tiny.safetensors``); default the packaged one.
    """
    if unknown:
        raise ArgumentError(f"{name} takes no option(s) {format_choices(unknown)}; valid "
                            f"options: {format_choices(_OPTIONS)}")
    model = DefaultSkySense(_PRESET, window=window, modalities=("s2",), name=name,
                            batch_size=batch_size, s2_bands=BANDS)
    model.spec = _spec(name, window, batch_size, meta=CARDS.get(name, CARD).metadata())
    path = Path(weights) if weights is not None else weights_path()
    packaged = weights is None
    if packaged and not path.is_file():
        raise ArgumentError(f"the packaged weights {str(path)!r} are missing from this "
                            "installation; reinstall xsky, or make them with "
                            "`xsky train xsky/train/recipes/default.toml` and pass weights=")
    report = load_weights(
        model, path, strict=strict, what=f"{name} weights",
        sha256=WEIGHTS_SHA256 if packaged else None,
        optional=lambda key: key == "position_offsets",
        fix="Is it an xsky-s2-tiny (skysense-tiny, s2 B02/B03/B04/B08) state dict, e.g. "
            "the export of the default recipe?")
    if "position_offsets" in report.defaulted:  # a plain export of the recipe's first step
        warnings.warn(
            f"{str(path)!r} has no position_offsets, so the in-patch position term stays in "
            "the embedding; fit them with `python -m xsky.train.recipes.default_offsets "
            f"{path} <out>`", UserWarning, stacklevel=2)
    model.eval()
    return model


def _factory(alias: str) -> Any:
    def create(weights: str | None = None, **options: Any) -> DefaultSkySense:
        return create_default(weights, name=alias, **options)

    create.__name__ = f"create_{alias.replace('-', '_')}"
    create.__doc__ = create_default.__doc__
    return create


for _alias in (_NAME, "default"):
    register_model(_alias, _factory(_alias), spec=_spec(_alias, meta=CARDS[_alias].metadata()),
                   card=CARDS[_alias])
