"""Second step of the default recipe: fit the per-patch-position offsets of the encoder.

After ``xsky train xsky/train/recipes/default.toml`` has written the teacher's weights, this
embeds the pretraining split of the Romania sample (western 60 columns; the May-September
series of 2016-2019, one fused embedding per year) with them, takes the mean embedding at
each of the 4 x 4 in-patch positions minus the overall mean, and writes the weights plus
``position_offsets`` as the file :func:`xsky.models.create_model("default") <xsky.models.
create_model>` loads (see :class:`xsky.models.default.DefaultSkySense`)::

    python -m xsky.train.recipes.default_offsets runs/default/xsky-s2-tiny.safetensors \\
        xsky/data/xsky-s2-tiny.safetensors
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch

__all__ = ["fit_position_offsets"]

_YEARS = (2016, 2017, 2018, 2019)


def fit_position_offsets(weights: str | os.PathLike[str]) -> torch.Tensor:
    """``(D, 4, 4)`` offsets of the encoder in ``weights`` on the pretraining split."""
    from ... import tutorial
    from ...api import embed
    from ...models.default import _PATCH, BANDS, create_default

    with warnings.catch_warnings():  # a plain export has no offsets yet: that is the point
        warnings.simplefilter("ignore", UserWarning)
        model = create_default(str(weights))
    with torch.no_grad():  # fit on the raw encoder, also when refitting
        cast(torch.Tensor, model.position_offsets).zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cube = tutorial.open_dataset("romania")
    cube = cube[[*BANDS, "valid"]].isel(x=slice(0, 60))
    sums = np.zeros((model.config.embed_dim, _PATCH, _PATCH))
    counts = np.zeros((_PATCH, _PATCH))
    for year in _YEARS:
        series = cube.sel(time=slice(f"{year}-05-01", f"{year}-09-30")).load()
        emb = embed(series, model).transpose("feature", "y", "x").values.astype(np.float64)
        emb = emb - np.nanmean(emb, axis=(1, 2), keepdims=True)
        for qy in range(_PATCH):
            for qx in range(_PATCH):
                block = emb[:, qy::_PATCH, qx::_PATCH]
                ok = np.isfinite(block).all(axis=0)
                sums[:, qy, qx] += np.where(ok, block, 0.0).sum(axis=(1, 2))
                counts[qy, qx] += ok.sum()
    return torch.from_numpy(sums / counts).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", help="the teacher weights the recipe exported")
    ap.add_argument("out", help="the finished weights file")
    args = ap.parse_args()
    from safetensors.torch import load_file, save_file

    offsets = fit_position_offsets(args.weights)
    state = load_file(args.weights)
    state["position_offsets"] = offsets
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(state, str(tmp), metadata={"position_offsets": "fitted on the pretraining split"})
    os.replace(tmp, out)
    print(f"{out}: position offsets norm {float(offsets.norm()):.3f}")


if __name__ == "__main__":
    main()
