"""Pretraining runs described by a TOML file (``xsky train CONFIG``).

A run config has the sections ``[data]``, ``[model]``, ``[sampler]``, ``[[objectives]]``,
``[fit]`` and ``[output]``; see ``xsky/train/recipes/default.toml`` for a complete one.
Relative paths are relative to the current working directory (where the run is started),
as for any command-line tool. Unknown keys are refused (a typo must not
silently train something else).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..exceptions import ArgumentError, format_choices

__all__ = ["OBJECTIVES", "build_run", "load_config", "train_from_config"]

_SECTIONS = {"data", "model", "sampler", "objectives", "fit", "output"}
_DATA_KEYS = {"source", "chunks", "variables", "isel", "sel", "units", "load"}
_MODEL_KEYS = {"name", "options"}
_OUTPUT_KEYS = {"checkpoint_dir", "export"}
_OBJECTIVE_KEYS = {"kind", "weight", "options"}

#: ``kind`` of an ``[[objectives]]`` entry -> class name in :mod:`xsky.train.objectives`.
OBJECTIVES = {"mgc": "MultiGranularityContrastive", "align": "CrossModalAlignment",
              "proto": "GeoPrototypeLoss"}


def _check_keys(section: str, got: Mapping[str, Any], known: set[str]) -> None:
    bad = set(got) - known
    if bad:
        raise ArgumentError(f"config [{section}]: unknown key(s) {format_choices(bad)}; "
                            f"expected {format_choices(known)}")


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a run config; relative paths become absolute (from the working
    directory)."""
    p = Path(path).expanduser()
    try:
        cfg = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ArgumentError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ArgumentError(f"config file {str(p)!r} is not valid TOML: {err}") from None
    cfg = check_config(cfg)
    src = cfg["data"]["source"]
    if not src.startswith("tutorial:"):
        cfg["data"]["source"] = str(Path(src).expanduser().resolve())
    for key in _OUTPUT_KEYS:
        if key in cfg["output"]:
            cfg["output"][key] = str(Path(cfg["output"][key]).expanduser().resolve())
    return cfg


def check_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the structure of a run config (a mapping as read from TOML)."""
    cfg = dict(cfg)
    _check_keys("top level", cfg, _SECTIONS)
    for sec in ("data", "model", "sampler", "fit", "output"):
        cfg.setdefault(sec, {})
        if not isinstance(cfg[sec], Mapping):
            raise ArgumentError(f"config [{sec}] must be a table")
        cfg[sec] = dict(cfg[sec])
    _check_keys("data", cfg["data"], _DATA_KEYS)
    _check_keys("model", cfg["model"], _MODEL_KEYS)
    _check_keys("output", cfg["output"], _OUTPUT_KEYS)
    if "source" not in cfg["data"]:
        raise ArgumentError("config [data] needs source = 'tutorial:romania' or a path to a "
                            "NetCDF file or Zarr store")
    if "name" not in cfg["model"]:
        raise ArgumentError("config [model] needs name = a registered model, e.g. "
                            "'skysense-tiny'")
    objs = cfg.get("objectives")
    if not objs or not isinstance(objs, list):
        raise ArgumentError("config needs at least one [[objectives]] entry with kind = one of "
                            f"{format_choices(OBJECTIVES)}")
    for o in objs:
        _check_keys("objectives", o, _OBJECTIVE_KEYS)
        if o.get("kind") not in OBJECTIVES:
            raise ArgumentError(f"config [[objectives]]: kind must be one of "
                                f"{format_choices(OBJECTIVES)}, got {o.get('kind')!r}")
    for bad in ("model", "sampler", "objectives", "checkpoint_dir", "resume"):
        if bad in cfg["fit"]:
            raise ArgumentError(f"config [fit] cannot set {bad!r}; it comes from its own "
                                "section (or the command line for resume)")
    return cfg


def open_source(data: Mapping[str, Any]) -> Any:
    """The training cube of a ``[data]`` section (lazy, dask-chunked)."""
    import xarray as xr

    src = str(data["source"])
    chunks = data.get("chunks", {"time": 10})
    if src.startswith("tutorial:"):
        from .. import tutorial

        ds = tutorial.open_dataset(src.split(":", 1)[1], chunks=chunks)
    elif src.rstrip("/").endswith(".zarr"):
        ds = xr.open_zarr(src, chunks=chunks, decode_coords="all")
    else:
        ds = xr.open_dataset(src, chunks=chunks, decode_coords="all")
    if "variables" in data:
        ds = ds[list(data["variables"])]
    if "isel" in data:
        ds = ds.isel({k: slice(*v) for k, v in data["isel"].items()})
    if "sel" in data:
        ds = ds.sel({k: slice(*v) for k, v in data["sel"].items()})
    if data.get("load", False):  # a small cube: read once, not once per window
        ds = ds.load()
    return ds


def build_run(cfg: Mapping[str, Any], *, client: Any = None) -> tuple[Any, Any, list[Any]]:
    """The model, sampler and objectives a checked config describes."""
    from ..models import create_model
    from . import objectives as objectives_module
    from .sampler import WindowSampler

    model = create_model(cfg["model"]["name"], **dict(cfg["model"].get("options", {})))
    data = cfg["data"]
    opts = dict(cfg["sampler"])
    window = opts.pop("window", model.spec.window)
    batch_size = opts.pop("batch_size", 16)
    cube = open_source(data)
    sampler = WindowSampler(cube, window, batch_size, model=model,
                            units=data.get("units"), client=client, **opts)
    objs: list[Any] = []
    for o in cfg["objectives"]:
        cls = getattr(objectives_module, OBJECTIVES[o["kind"]])
        kw = dict(o.get("options", {}))
        if o["kind"] == "proto" and "region_ids" not in kw:
            # a table for the regions the cube touches, not for all 4,096 of the globe
            kw["region_ids"] = cube_region_ids(
                cube, kw.get("regions", objectives_module.SKYSENSE_REGIONS))
        obj = cls(model.spec.feature_dim, **kw)
        objs.append((obj, float(o.get("weight", 1.0))))
    return model, sampler, objs


def cube_region_ids(ds: Any, regions: Any, samples: int = 33) -> list[int]:
    """Ids of the geo-context regions a cube's footprint touches (from a grid of its pixel
    coordinates, edges included)."""
    import numpy as np

    from ..geo import get_crs, pixel_lonlat, spatial_dims

    ydim, xdim = spatial_dims(ds)
    ys, xs = np.asarray(ds[ydim].values), np.asarray(ds[xdim].values)
    def pick(v: np.ndarray) -> np.ndarray:
        return v[np.unique(np.linspace(0, len(v) - 1, samples).round().astype(int))]

    lon, lat = pixel_lonlat(pick(xs), pick(ys), get_crs(ds))
    ids = np.unique(regions.ids_from_lonlat(lon.ravel(), lat.ravel()))
    return [int(i) for i in ids if i >= 0]


def train_from_config(config: str | os.PathLike[str] | Mapping[str, Any], *,
                      resume: bool = True, steps: int | None = None, progress: bool = True,
                      client: Any = None) -> Any:
    """Run (or resume) the pretraining a config describes.

    Parameters
    ----------
    config
        A TOML file, or a mapping with its sections.
    resume
        Continue from the newest checkpoint in ``[output] checkpoint_dir``.
    steps
        Override ``[fit] steps`` (e.g. a short smoke run).
    progress
        Show the progress bar.
    client
        A ``distributed.Client``: the sampler computes windows on its cluster.

    Returns
    -------
    History
        The run's per-step records. With ``[output] export``, the teacher's weights are
        also written there (safetensors) at the end.
    """
    from .loop import fit

    cfg = load_config(config) if isinstance(config, (str, os.PathLike)) else check_config(config)
    model, sampler, objs = build_run(cfg, client=client)
    fit_opts = dict(cfg["fit"])
    if steps is not None:
        fit_opts["steps"] = steps
    if "steps" not in fit_opts:
        raise ArgumentError("config [fit] needs steps = the number of optimiser steps")
    out = cfg["output"]
    history = fit(model, sampler, objs, checkpoint_dir=out.get("checkpoint_dir"),
                  resume=resume, progress=progress, **fit_opts)
    if "export" in out:
        export_weights(history, out["export"])
    return history


def export_weights(history: Any, path: str | os.PathLike[str]) -> Path:
    """Write the teacher encoder of a run's last checkpoint as a plain safetensors file
    (the weights :func:`xsky.models.create_model` loads)."""
    from safetensors.torch import save_file

    from ..models._checkpoint import strip_prefix
    from .checkpoint import load_checkpoint

    if history.checkpoint is None:
        raise ArgumentError("export needs a checkpoint: set [output] checkpoint_dir")
    tensors, state = load_checkpoint(history.checkpoint)
    teacher = strip_prefix(tensors, "teacher.")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    meta = {"xsky_train_step": str(state["step"]),
            "model": str(state["config"]["model"].get("name", ""))}
    save_file(teacher, str(tmp), metadata=meta)
    os.replace(tmp, p)
    return p
