"""Pretraining encoders on datacubes: Dask-fed sampling, self-supervised objectives and a
resumable torch loop, on one machine or a Dask cluster (``pip install 'xsky[train]'``).

- :class:`WindowSampler`: training micro-batches of windows from a lazy cube, computed in
  the background, in an order that is a pure function of the seed (any number of ranks).
- Objectives: :class:`MultiGranularityContrastive` (pixel, object and image level, student
  and EMA teacher), :class:`CrossModalAlignment`, :class:`GeoPrototypeLoss` (region-aware
  prototypes, Sinkhorn-Knopp) and :class:`LocationImageCLIP` (SatCLIP's loss,
  :func:`clip_loss`).
- :func:`fit` (AMP, clipping, EMA teacher, atomic checkpoints, exact resume) and
  :func:`fit_distributed` (``torch.distributed`` ranks on Dask workers).
- :func:`train_from_config`: a run described by a TOML file (``xsky train CONFIG``).
"""

from __future__ import annotations

from .._interop import require

require("torch", "xsky.train")

from .config import export_weights, train_from_config  # noqa: E402
from .distributed import fit_distributed  # noqa: E402
from .features import Features, encode  # noqa: E402
from .loop import History, fit  # noqa: E402
from .losses import CLIPLoss, clip_loss  # noqa: E402
from .objectives import (  # noqa: E402
    DINO_PRESET,
    CrossModalAlignment,
    GeoPrototypeLoss,
    LocationImageCLIP,
    MultiGranularityContrastive,
    Objective,
    StepOutputs,
    teacher_momentum,
)
from .sampler import WindowSampler  # noqa: E402
from .views import View, align, make_views  # noqa: E402

__all__ = [
    "DINO_PRESET",
    "CLIPLoss",
    "CrossModalAlignment",
    "Features",
    "GeoPrototypeLoss",
    "History",
    "LocationImageCLIP",
    "MultiGranularityContrastive",
    "Objective",
    "StepOutputs",
    "View",
    "WindowSampler",
    "align",
    "clip_loss",
    "encode",
    "export_weights",
    "fit",
    "fit_distributed",
    "make_views",
    "teacher_momentum",
    "train_from_config",
]
