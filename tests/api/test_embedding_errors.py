"""Bad input gets an xsky error that names the problem and the fix."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

import xsky
from xsky.testing import synthetic_s2_cube


@pytest.fixture
def cube() -> xr.Dataset:
    return synthetic_s2_cube(32, 32, 2, seed=1)


def _irregular(ds):
    x = ds.x.values.copy()
    x[5:] += 3.0
    return ds.assign_coords(x=x)


def _all_nan(ds):
    ds = ds.copy(deep=True)
    for b in ("B02", "B03", "B04", "B08"):
        ds[b][:] = np.nan
    return ds


CASES = [
    # (id, transform of the cube, embed kwargs, error type, message fragment)
    ("missing band", lambda d: d.drop_vars("B08"), {}, xsky.BandMismatchError,
     r"missing band\(s\) \['B08'\]"),
    ("unknown model", lambda d: d, {"model": "skysense-hugee"}, xsky.UnknownModelError,
     "Registered models: .*'test-tiny'"),
    ("model of wrong type", lambda d: d, {"model": 42}, xsky.ArgumentError, "xsky.models.wrap"),
    ("missing x/y dims", lambda d: d.rename(x="col", y="row"), {}, xsky.DimensionError,
     "needs spatial dims 'y' and 'x'"),
    ("extra dim on a band", lambda d: d.assign(B02=d.B02.expand_dims(level=2)), {},
     xsky.DimensionError, r"unexpected dimension\(s\) \['level'\]"),
    ("no CRS", lambda d: d.drop_vars("spatial_ref"), {}, xsky.CRSError, "rio.write_crs"),
    ("x not monotonic", lambda d: d.isel(x=np.r_[0:10, 20:32, 10:20]), {}, xsky.DimensionError,
     r"not monotonic; sort with obj.sortby\('x'\)"),
    ("x irregular", _irregular, {}, xsky.DimensionError, "irregular"),
    ("x without coordinate", lambda d: d.drop_vars("x"), {}, xsky.DimensionError,
     "has no coordinate"),
    ("time chunked for a time-fusing model", lambda d: d.chunk(time=1),
     {"model": "temporal"}, xsky.ChunkingError, r"chunk\(time=-1\)"),
    ("8-bit integer S2", lambda d: d.assign(B02=d.B02.astype("uint8")), {}, xsky.DataError,
     "8-bit integers overflow"),
    ("64-bit integer", lambda d: d.assign(B02=d.B02.astype("int64")), {}, xsky.DataError,
     "64-bit integers"),
    ("boolean band", lambda d: d.assign(B02=d.B02 > 0.1), {}, xsky.DataError,
     "integer or floating-point"),
    ("empty array", lambda d: d.isel(time=slice(0, 0)), {}, xsky.DimensionError,
     r"input is empty \(shape \{.time.: 0"),
    ("single pixel column", lambda d: d.isel(x=[0]), {}, xsky.DimensionError, "single coordinate"),
    ("all-NaN input", _all_nan, {}, xsky.DataError, "no valid pixel"),
    ("all invalid mask", lambda d: d.assign(valid=d.valid & False), {}, xsky.DataError,
     "no valid pixel"),
    ("window larger than the array", lambda d: d.isel(x=slice(0, 10)), {}, xsky.DimensionError,
     "fewer than the model window of 16"),
    ("bad device", lambda d: d, {"device": "gpu"}, xsky.ArgumentError, "device='gpu'.*'cuda'"),
    ("bad batch_size", lambda d: d, {"batch_size": 0}, xsky.ArgumentError,
     "batch_size must be a positive integer or None, got 0$"),
    ("float batch_size", lambda d: d, {"batch_size": 2.5}, xsky.ArgumentError,
     "batch_size must be a positive integer or None, got 2.5$"),
    ("bad edge", lambda d: d, {"edge": "wrap"}, xsky.ArgumentError, "edge='wrap'.*'reflect'"),
    ("bad precision", lambda d: d, {"precision": "fp8"}, xsky.ArgumentError, "precision"),
    ("bad overlap", lambda d: d, {"overlap": 3}, xsky.ArgumentError, "multiple of the stride"),
    ("weights with a model instance", lambda d: d, {"model": "instance", "weights": "x.pt"},
     xsky.ArgumentError, "ready model instance"),
    ("missing weights file", lambda d: d, {"weights": "/nonexistent/w.pt"}, xsky.CheckpointError,
     "do not exist"),
    ("unknown units", lambda d: d, {"units": "furlongs"}, xsky.UnitsError, "units='furlongs'"),
    ("impossible unit conversion", lambda d: d, {"units": "db"}, xsky.UnitsError,
     "no conversion"),
    ("duplicate band aliases", lambda d: d.assign(blue=d.B02 * 1.0).rename(B02="B2"), {},
     xsky.BandMismatchError, "same band 'B02'"),
    ("DataArray without band dim", lambda d: d.B02, {}, xsky.DimensionError, "'band' dimension"),
    ("not an xarray object", lambda d: d.B02.values, {}, xsky.ArgumentError, "DataArray, Dataset"),
    ("DataTree with unknown nodes", lambda d: xr.DataTree.from_dict({"landsat": d}), {},
     xsky.BandMismatchError, "name the nodes"),
    ("cuda without a GPU", lambda d: d, {"device": "cuda"}, xsky.ArgumentError, "no CUDA GPU"),
    ("bad resources", lambda d: d, {"resources": {"GPU": 0}}, xsky.ArgumentError,
     "positive amount"),
]


@pytest.mark.parametrize(("transform", "kwargs", "err", "match"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_xsky_error(cube, transform, kwargs, err, match, temporal_mean):
    import torch

    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    kwargs = dict(kwargs)
    model = kwargs.pop("model", "test-tiny")
    if model == "temporal":
        model = temporal_mean
    elif model == "instance":
        model = xsky.models.create_model("test-tiny")
    obj = transform(cube)
    with pytest.raises(err, match=match) as info:
        xsky.embed(obj, model, **kwargs)
    assert type(info.value) is err  # exactly the documented class, not a relative


def test_at_least_twenty_distinct_bad_inputs_each_get_their_own_message(cube, temporal_mean):
    """Twenty cases that all hit one generic error would pass the test above: each case's
    message must match its own fragment and no other case's, and the messages differ."""
    import torch

    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)
    messages = {}
    for name, transform, kwargs, err, _ in CASES:
        kwargs = dict(kwargs)
        if kwargs.get("device") == "cuda" and torch.cuda.is_available():
            continue
        model = kwargs.pop("model", "test-tiny")
        if model == "temporal":
            model = temporal_mean
        elif model == "instance":
            model = xsky.models.create_model("test-tiny")
        with pytest.raises(xsky.XSkyError) as info:
            xsky.embed(transform(cube), model, **kwargs)
        assert type(info.value) is err, (name, type(info.value))  # the leaf, not a family
        messages[name] = str(info.value)
    # all-NaN bands and an all-false mask are the same problem, with the same message
    same_problem = [{"all-NaN input", "all invalid mask"}]
    by_message: dict[str, set[str]] = {}
    for name, msg in messages.items():
        by_message.setdefault(msg, set()).add(name)
    shared = [names for names in by_message.values() if len(names) > 1]
    assert all(names in same_problem for names in shared), shared
    for name, _, _, _, match in CASES:
        others = [n for n, msg in messages.items() if n != name and re.search(match, msg)
                  and not any({n, name} <= group for group in same_problem)]
        assert not others, f"the fragment of {name!r} also matches {others}"
    # every message says what to do or what was expected, not just that something failed
    for name, msg in messages.items():
        assert len(msg) > 40, (name, msg)


def test_input_is_not_modified_by_a_failed_call(cube):
    before = cube.copy(deep=True)
    with pytest.raises(xsky.XSkyError):
        xsky.embed(cube, "test-tiny", edge="bogus")
    with pytest.raises(xsky.XSkyError):
        xsky.embed(cube.drop_vars("B08"), "test-tiny")
    xr.testing.assert_identical(cube, before)
