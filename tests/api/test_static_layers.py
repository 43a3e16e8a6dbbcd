"""Static layers (terrain) beside dated ones, for models that put every modality on one
time axis: the table's ``static`` flag lets an undated SRTM layer in, and only that."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xsky
from xsky.exceptions import DimensionError
from xsky.geo import write_crs
from xsky.models import EmbeddingModel, ModalitySpec, ModelSpec


class Probe(EmbeddingModel):
    """Per pixel: the S2 B04 value at the first date, then elevation and slope as given."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec(
            "static-probe",
            (ModalitySpec("s2", ("B04",), units="reflectance"),
             ModalitySpec("s1", ("VV",), units="db"),
             ModalitySpec("srtm", ("elevation", "slope"), units="native")),
            window=2, stride=1, feature_dim=3, fuses_time=True, shared_time=True,
            required_modalities=("s2",),
        )

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s2 = inputs["s2"][:, 0, 0]  # (B, W, W) at t = 0
        terrain = inputs["srtm"]
        terrain = terrain[:, :, 0] if terrain.ndim == 5 else terrain
        return torch.cat([s2[:, None], terrain], dim=1)


def _layers(ny=4, nx=4, nt=2):
    time = pd.to_datetime(["2021-05-01", "2021-06-01"][:nt])
    y = 5_000_000.0 - 10.0 * np.arange(ny) - 5
    x = 400_000.0 + 10.0 * np.arange(nx) + 5
    rng = np.random.default_rng(1)
    s2 = xr.Dataset({"B04": (("time", "y", "x"),
                             rng.uniform(0.05, 0.3, (nt, ny, nx)).astype("float32"))},
                    coords={"time": time, "y": y, "x": x})
    elev = rng.uniform(100, 900, (ny, nx)).astype("float32")
    srtm = xr.Dataset({"elevation": (("y", "x"), elev),
                       "slope": (("y", "x"), np.full((ny, nx), 3.0, np.float32))},
                      coords={"y": y, "x": x})
    s1 = xr.Dataset({"VV": (("y", "x"), np.full((ny, nx), -12.0, np.float32),
                            {"units": "dB"})}, coords={"y": y, "x": x})
    return (write_crs(s2, "EPSG:32633"), write_crs(srtm, "EPSG:32633"),
            write_crs(s1, "EPSG:32633"))


def test_an_undated_terrain_layer_joins_a_time_series():
    s2, srtm, _ = _layers()
    emb = xsky.embed(xsky.stack(s2=s2, srtm=srtm), Probe()).compute()
    out = emb.transpose("y", "x", "feature").values
    np.testing.assert_allclose(out[..., 0], s2["B04"].isel(time=0).values, rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], srtm["elevation"].values, rtol=1e-6)
    np.testing.assert_array_equal(out[..., 2], 3.0)


def test_an_undated_layer_that_is_not_static_is_refused():
    s2, _, s1 = _layers()
    with pytest.raises(DimensionError, match=r"\['s1'\] have no 'time' dimension"):
        xsky.embed(xsky.stack(s2=s2, s1=s1), Probe())
