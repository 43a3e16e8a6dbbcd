"""Training utilities (needs torch: ``pip install 'xsky[train]'``).

Objectives live in :mod:`xsky.train.losses`.
"""

from __future__ import annotations

from .._interop import require

require("torch", "xsky.train")

from .losses import CLIPLoss, clip_loss  # noqa: E402

__all__ = ["CLIPLoss", "clip_loss"]
