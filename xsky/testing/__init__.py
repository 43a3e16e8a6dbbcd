"""Public test helpers: a scheduler that fails on compute, synthetic cubes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

__all__ = ["CountingScheduler", "raise_if_dask_computes", "synthetic_s2_cube"]


class CountingScheduler:
    """A dask scheduler that counts compute calls and fails past ``max_computes``."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        import dask

        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Context manager in which any dask compute beyond ``max_computes`` raises.

    Examples
    --------
    >>> import dask.array as da
    >>> with raise_if_dask_computes():
    ...     y = da.ones(4) + 1  # building a graph is fine
    """
    import dask

    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


def synthetic_s2_cube(
    ny: int = 48,
    nx: int = 40,
    nt: int = 3,
    *,
    bands: Sequence[str] = ("B02", "B03", "B04", "B08"),
    seed: int = 0,
    crs: str = "EPSG:32633",
    res: float = 10.0,
    chunks: dict[str, int] | None = None,
    valid_fraction: float = 1.0,
) -> xr.Dataset:
    """A smooth random Sentinel-2-like reflectance cube ``(time, y, x)`` with ``valid``.

    Parameters
    ----------
    ny, nx, nt
        Size.
    bands
        Band names.
    seed
        Random seed (the cube is deterministic).
    crs, res
        CRS and pixel size; the grid starts at (500000, 5000000), y descending.
    chunks
        Dask chunks (numpy-backed if None).
    valid_fraction
        Expected fraction of ``valid`` pixels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    data = {}
    for i, b in enumerate(bands):
        base = 0.05 + 0.05 * i
        field = (np.sin(xx / (5 + i) + rng.uniform(0, 6)) * np.cos(yy / (7 + i)) + 1) * 0.1
        noise = rng.normal(0, 0.01, (nt, ny, nx))
        data[b] = (("time", "y", "x"), (base + field[None] + noise).astype("float32"),
                   {"units": "reflectance"})
    valid = rng.uniform(size=(nt, ny, nx)) < valid_fraction
    ds = xr.Dataset(
        {**data, "valid": (("time", "y", "x"), valid)},
        coords={
            "time": pd.date_range("2021-03-01", periods=nt, freq="17D"),
            "y": 5_000_000 - res / 2 - res * np.arange(ny),
            "x": 500_000 + res / 2 + res * np.arange(nx),
        },
    )
    ds = ds.rio.write_crs(crs)
    return ds.chunk(chunks) if chunks else ds
