"""Session-scoped offline STAC fixtures: real rasters written once as local COGs."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from xsky.testing import stac as fx

# The 13 Romania dates the fixtures use (cube indices 40..52, 2018-01-07 .. 2018-05-22).
ROMANIA_START, ROMANIA_N = 40, 13


@pytest.fixture(scope="session")
def data_dir(shared: Path) -> Path:
    return shared / "data"


@pytest.fixture(scope="session")
def cog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stac_cogs")


@pytest.fixture(scope="session")
def romania_items(cog_dir: Path, data_dir: Path):
    """The 13-date Planetary Computer search, rewritten onto Romania COGs."""
    return fx.romania_s2_items(cog_dir, data_dir, start=ROMANIA_START, n_dates=ROMANIA_N)


@pytest.fixture(scope="session")
def romania_ref(data_dir: Path) -> dict[str, xr.Dataset]:
    """The Romania cube itself (DN, uint16), for the same 13 dates, at 10 m and 20 m."""
    sel = {"time": slice(ROMANIA_START, ROMANIA_START + ROMANIA_N)}
    out = {}
    for res in ("10m", "20m"):
        path = data_dir / f"s2_ts_romania/sentinel2_cube_subset_romania_{res}.nc"
        with xr.open_dataset(path, mask_and_scale=False) as ds:
            out[res] = ds.isel(sel).load()
    return out


@pytest.fixture(scope="session")
def ssl4eo_s2(cog_dir: Path, data_dir: Path):
    return fx.ssl4eo_s2_items(cog_dir, data_dir)


@pytest.fixture(scope="session")
def ssl4eo_s1(cog_dir: Path, data_dir: Path):
    return fx.ssl4eo_s1_items(cog_dir, data_dir)
