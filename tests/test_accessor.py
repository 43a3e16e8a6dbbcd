"""The ``.sky`` accessor: generated from the public functions, nothing of its own."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import xarray as xr

import xsky
from xsky.accessor import METHODS, SkyAccessor, _target


def _minus_obj(fn):
    sig = inspect.signature(fn)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


@pytest.mark.parametrize("cls", [xr.DataArray, xr.Dataset, xr.DataTree])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_accessor_methods_have_the_functions_signature_and_docs(cls, name):
    fn = _target(name)
    on_class = getattr(cls.sky, name)
    assert inspect.signature(on_class) == _minus_obj(fn)
    assert on_class.__doc__ == fn.__doc__ and fn.__doc__
    on_instance = getattr(cls().sky if cls is not xr.DataTree else xr.DataTree().sky, name)
    assert inspect.signature(on_instance) == _minus_obj(fn)


def test_every_accessor_target_is_public():
    for name, (module, func) in METHODS.items():
        fn = _target(name)
        if module.startswith("xsky.api"):
            assert getattr(xsky, func) is fn, f"xsky.{func} is not the accessor's target"
        else:
            assert getattr(xsky.plot, func) is fn


def test_accessor_calls_forward_the_object_first(monkeypatch):
    seen = {}

    def fake(obj, *args, **kwargs):
        seen.update(obj=obj, args=args, kwargs=kwargs)
        return "done"

    monkeypatch.setitem(_target.__wrapped__.__globals__, "_target", lambda name: fake)
    da = xr.DataArray(np.zeros((2, 2)), dims=("y", "x"))
    assert da.sky.embed("m", batch_size=3) == "done"
    assert seen["obj"] is da and seen["args"] == ("m",) and seen["kwargs"] == {"batch_size": 3}


def test_accessor_keeps_no_state():
    assert SkyAccessor.__slots__ == ("_obj",)


def test_dir_of_xsky_lists_the_public_functions():
    names = dir(xsky)
    for fn in ("embed", "stack", "load_stac", "location_embed", "location_embed_points",
               "prototypes", "classify", "geo_context", "save_prototypes", "open_prototypes"):
        assert fn in names and fn in xsky.__all__
        assert callable(getattr(xsky, fn))
    for mod in ("models", "modalities", "plot", "io", "tutorial", "testing"):
        assert mod in names
