"""Stores are replaced only when xsky wrote them, and only after a successful write."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xsky.exceptions import ArgumentError
from xsky.io.store import MARKER, NETCDF_ATTR, atomic_store, check_target, is_xsky_store


def _ds(v: float) -> xr.Dataset:
    return xr.Dataset({"a": ("x", np.full(3, v))})


def test_a_new_store_is_written_and_marked(tmp_path):
    target = tmp_path / "out.zarr"
    with atomic_store(target, overwrite=False) as tmp:
        _ds(1).to_zarr(tmp, consolidated=False)
    assert is_xsky_store(target) and MARKER in xr.open_zarr(target, consolidated=False).attrs
    assert float(xr.open_zarr(target, consolidated=False)["a"][0]) == 1.0
    assert not any(p.name.startswith(".out.zarr.xsky") for p in tmp_path.iterdir())


def test_an_existing_store_needs_overwrite(tmp_path):
    target = tmp_path / "out.zarr"
    with atomic_store(target, overwrite=False) as tmp:
        _ds(1).to_zarr(tmp, consolidated=False)
    with pytest.raises(ArgumentError, match="exists; pass overwrite=True"):
        check_target(target, overwrite=False)
    with atomic_store(target, overwrite=True) as tmp:
        _ds(2).to_zarr(tmp, consolidated=False)
    assert float(xr.open_zarr(target, consolidated=False)["a"][0]) == 2.0


def test_a_directory_xsky_did_not_write_is_never_replaced(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ArgumentError, match="did not write"):
        check_target(mine, overwrite=True)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"


def test_a_failed_write_keeps_the_previous_result(tmp_path):
    target = tmp_path / "out.zarr"
    with atomic_store(target, overwrite=False) as tmp:
        _ds(1).to_zarr(tmp, consolidated=False)

    def interrupted_write():
        with atomic_store(target, overwrite=True) as tmp:
            _ds(2).to_zarr(tmp, consolidated=False)
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted_write()
    assert float(xr.open_zarr(target, consolidated=False)["a"][0]) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_netcdf_stores_are_marked_by_an_attribute(tmp_path):
    target = tmp_path / "out.nc"
    with atomic_store(target, overwrite=False) as tmp:
        _ds(1).assign_attrs({NETCDF_ATTR: 1}).to_netcdf(tmp)
    assert is_xsky_store(target)
    other = tmp_path / "theirs.nc"
    _ds(5).to_netcdf(other)
    assert not is_xsky_store(other)
    with pytest.raises(ArgumentError, match="did not write"):
        check_target(other, overwrite=True)
