"""The ``xsky`` command line: thin commands over the Python API.

``xsky embed``
    STAC items (a JSON/GeoJSON file: an Item or a FeatureCollection, e.g. a saved search) or
    an embedded sample, cropped to a bbox and a time range, embedded with a registered model
    and written to a Zarr store region by region, with a progress bar; ``--resume``
    continues an interrupted run.
``xsky models``
    List the model registry.
``xsky train CONFIG``
    Pretrain an encoder as a TOML config describes (checkpoints and a metrics log out,
    resumable; see ``xsky/train/recipes/default.toml``).

Examples
--------
::

    xsky models
    xsky models "satclip-*" -v
    xsky embed --sample romania --model test-tiny --out out/romania.zarr --preview out/romania.png
    xsky train xsky/train/recipes/default.toml --steps 20
    xsky embed --items search.geojson --bbox 22.145 45.200 22.158 45.209 \\
        --time 2018-01-01/2018-03-31 --model test-tiny --out out/emb.zarr
    # killed half-way? the same command with --resume computes only what is missing
    xsky embed --items search.geojson --bbox 22.145 45.200 22.158 45.209 \\
        --time 2018-01-01/2018-03-31 --model test-tiny --out out/emb.zarr --resume
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from . import _coerce, modalities
from .exceptions import ArgumentError, DataError, XSkyError

__all__ = ["main"]


def _crop_sample(ds: Any, bbox: tuple[float, float, float, float] | None, time: str | None) -> Any:
    """Crop an in-memory cube by a lon/lat bbox and a ``start/end`` time range."""
    import numpy as np

    from .geo import get_crs, spatial_dims

    rng = _coerce.time_range(time)
    if rng is not None:
        t0, t1 = rng
        tv = ds["time"].values.astype("datetime64[ns]")
        keep = (tv >= np.datetime64(t0.tz_localize(None))) & (tv <= np.datetime64(t1.tz_localize(None)))
        if not keep.any():
            raise DataError(
                f"no date of the sample falls in --time {time!r}; it spans "
                f"{str(tv.min())[:10]} .. {str(tv.max())[:10]}"
            )
        ds = ds.isel(time=np.flatnonzero(keep))
    if bbox is not None:
        from pyproj import Transformer

        x0, y0, x1, y1 = bbox
        tr = Transformer.from_crs("EPSG:4326", get_crs(ds), always_xy=True)
        left, bottom, right, top = tr.transform_bounds(x0, y0, x1, y1, densify_pts=21)
        ydim, xdim = spatial_dims(ds)
        xs, ys = ds[xdim].values, ds[ydim].values
        ix = np.flatnonzero((xs >= left) & (xs <= right))
        iy = np.flatnonzero((ys >= bottom) & (ys <= top))
        if ix.size == 0 or iy.size == 0:
            raise DataError(
                f"--bbox {bbox} does not overlap the sample (it covers x {xs.min():.0f}..{xs.max():.0f}, "
                f"y {ys.min():.0f}..{ys.max():.0f} in its CRS); give lon/lat degrees"
            )
        ds = ds.isel({xdim: slice(ix[0], ix[-1] + 1), ydim: slice(iy[0], iy[-1] + 1)})
    return ds


def _load(args: argparse.Namespace) -> Any:
    from .models import get_model_spec

    spec = get_model_spec(args.model)
    bbox = _coerce.bbox(" ".join(args.bbox), "--bbox") if args.bbox else None
    chunks = _coerce.chunks_spec(args.chunks)
    if args.sample:
        from . import tutorial

        ds = tutorial.open_dataset(args.sample, snow=args.snow)
        ds = _crop_sample(ds, bbox, args.time)
        # a model that fuses the dates needs them in one chunk; a per-date one streams dates
        return ds.chunk(chunks or {"time": -1 if spec.fuses_time else 1})
    from .io.stac import load_stac

    modality = args.modality or spec.modality_names[0]
    if modality not in spec.modality_names:
        raise ArgumentError(
            f"model {args.model!r} takes modalities {list(spec.modality_names)}, not "
            f"--modality {modality!r}"
        )
    bands = args.bands.split(",") if args.bands else list(spec.modality(modality).bands)
    cube = load_stac(
        args.items,
        modality=cast(Any, modality),
        bands=bands,
        bbox=bbox,
        time=args.time,
        crs=args.crs,
        resolution=args.resolution,
        chunks=chunks,
        snow=args.snow,
    )
    if spec.fuses_time and "time" in cube.dims and not (chunks and "time" in chunks):
        cube = cube.chunk(time=-1)
    return cube


def _check_outputs(args: argparse.Namespace) -> Path:
    """Validate every output path before any work (nothing is read or computed yet)."""
    from .io.store import check_target

    out = Path(args.out).expanduser()
    if out.suffix.lower() in (".nc", ".nc4", ".netcdf"):
        raise ArgumentError(
            f"--out {str(out)!r}: xsky embed writes a Zarr store (a directory), not NetCDF; "
            "give a path ending in .zarr"
        )
    if not args.resume:  # with --resume an existing store is continued (to_zarr checks it)
        from .io.zarr_regions import store_state

        if not args.overwrite and store_state(out).kind == "incomplete":
            raise ArgumentError(
                f"--out store {str(out)!r} exists and is incomplete (an interrupted run); "
                "pass --resume to continue it, or --overwrite to start over")
        check_target(out, overwrite=args.overwrite, what="--out store")
    if args.preview:
        png = Path(args.preview).expanduser()
        if png.resolve() == out.resolve():
            raise ArgumentError("--preview must differ from --out")
        if png.is_dir():
            raise ArgumentError(f"--preview {str(png)!r} is a directory; give a .png file path")
        if png.suffix.lower() != ".png":
            raise ArgumentError(f"--preview {str(png)!r} must be a .png file path")
        if png.exists():
            if not os.access(png, os.W_OK):
                raise ArgumentError(f"--preview {str(png)!r} exists and is not writable; "
                                    "choose another path")
        else:
            check_target(png, overwrite=False, what="--preview")  # its folder is writable
            png.parent.mkdir(parents=True, exist_ok=True)  # e.g. out/ of out/emb.png
    return out


def _source_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies the input of ``xsky embed`` across processes (part of the store's
    fingerprint, so ``--resume`` refuses a store written from other items or crops)."""
    import hashlib

    ident: dict[str, Any] = {
        "bbox": list(_coerce.bbox(" ".join(args.bbox), "--bbox") or ()) if args.bbox else None,
        "time": args.time, "snow": args.snow, "modality": args.modality, "bands": args.bands,
        "crs": args.crs, "resolution": args.resolution,
    }
    if args.sample:
        ident["sample"] = args.sample
    else:
        items = Path(args.items).expanduser()
        try:
            digest = hashlib.sha256(items.read_bytes()).hexdigest()
        except OSError:
            digest = None  # load_stac reports the unreadable file
        ident["items"] = {"name": items.name, "sha256": digest}
    return ident


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
    """Show the ``xsky`` logger's INFO messages (resume state, summary) on stderr."""
    import logging

    logger = logging.getLogger("xsky")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("xsky: %(message)s"))
    old = logger.level
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def _embed(args: argparse.Namespace) -> int:
    from .api import embed
    from .api.writing import to_zarr

    if args.dry_run:  # the cost plan only: nothing is written
        from .api.planning import plan

        cube = _load(args)
        cost = plan(cube, args.model, weights=args.weights, device=args.device,
                    batch_size=args.batch_size, edge=args.edge)
        print(f"xsky: plan for {args.out} (dry run, nothing written)", file=sys.stderr)
        print(cost)
        return 0
    out = _check_outputs(args)
    cube = _load(args)
    emb = embed(
        cube,
        args.model,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        edge=args.edge,
    )
    print(
        f"xsky: embedding {dict(cube.sizes)} with {args.model!r} -> {dict(emb.sizes)} "
        f"into {out}",
        file=sys.stderr,
    )
    # region by region, each recorded once it is on disk. A new store (or --resume) is
    # written in place, so an interrupted run can be continued with --resume; --overwrite
    # writes beside the previous store and swaps the new one in when complete (a failed or
    # interrupted write keeps the previous result). Only a store xsky wrote is replaced.
    resume = args.resume or not (out.exists() or out.is_symlink())
    with _log_to_stderr():
        to_zarr(emb, out, resume=resume, overwrite=args.overwrite,
                progress=args.progress, source=_source_identity(args))
    if args.preview:
        import xarray as xr

        from .plot import save_preview

        with xr.open_zarr(out, decode_coords="all") as stored:
            save_preview(stored["embedding"], args.preview)
        print(f"xsky: preview written to {args.preview}", file=sys.stderr)
    print(str(out))
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import get_model_card, get_model_spec, list_models

    names = list_models(args.pattern)
    if not names:
        raise ArgumentError(f"no registered model matches {args.pattern!r}; try `xsky models`")
    for name in names:
        if not args.verbose:
            print(name)
            continue
        s = get_model_spec(name)
        mods = "; ".join(f"{m.name}: {','.join(m.bands)}" for m in s.modalities)
        time = "fuses time" if s.fuses_time else "per date"
        print(f"{name}\twindow {s.window}, stride {s.stride}, {s.feature_dim} features "
              f"({s.output}, {time})\t{mods}")
        card = get_model_card(name)
        print(f"    licence: {card.license or 'not stated'}")
        if card.paper:
            print(f"    cite: {card.paper}")
        for w in card.weights:
            print(f"    weights: {w.name} sha256 {w.sha256 or 'unknown'}"
                  f" ({w.url or w.source})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train.config import train_from_config

    if args.steps is not None and args.steps < 1:
        raise ArgumentError(f"--steps must be positive, got {args.steps}")
    hist = train_from_config(args.config, resume=args.resume, steps=args.steps,
                             progress=args.progress)
    last = hist.records[-1] if hist.records else {}
    where = f"; checkpoint {hist.checkpoint}" if hist.checkpoint is not None else ""
    print(f"trained to step {last.get('step', 0)}: loss {last.get('loss', float('nan')):.4f}"
          f"{where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``xsky`` argument parser."""
    from ._version import __version__

    p = argparse.ArgumentParser(prog="xsky", description="Foundation-model embeddings for "
                                "xarray/Dask datacubes.")
    p.add_argument("--version", action="version", version=f"xsky {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of an error (default: one line)")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("embed", help="embed STAC items or a sample cube into a Zarr store",
                       description="Load a cube (STAC items or a sample), embed it with a "
                       "registered model and write the embedding to Zarr.")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--items", metavar="FILE",
                     help="STAC Item or FeatureCollection JSON/GeoJSON (e.g. a saved search)")
    src.add_argument("--sample", metavar="NAME", help="an embedded sample cube, e.g. 'romania'")
    e.add_argument("--model", required=True, help="registered model name (see `xsky models`)")
    e.add_argument("--out", required=True, metavar="STORE", help="output Zarr store")
    e.add_argument("--bbox", nargs="+", metavar="DEG",
                   help="min lon, min lat, max lon, max lat (degrees; spaces or commas)")
    e.add_argument("--time", metavar="START/END", help="time range, e.g. 2020-01-01/2020-06-30")
    e.add_argument("--modality", choices=modalities.names(),
                   help="modality of the items (default: the model's first)")
    e.add_argument("--bands", help="comma-separated bands (default: the model's)")
    e.add_argument("--crs", help="output CRS (default: the items')")
    e.add_argument("--resolution", type=float, help="output pixel size in CRS units")
    e.add_argument("--chunks", help="dask chunks: '512' or 'x=512,y=512,time=1'")
    e.add_argument("--snow", action="store_true", help="keep snow/ice pixels as valid")
    e.add_argument("--weights", metavar="PATH", help="local weights file for the model")
    e.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    e.add_argument("--batch-size", type=int, help="windows per forward pass")
    e.add_argument("--edge", default="reflect", choices=_coerce.EDGES)
    e.add_argument("--preview", metavar="PNG", help="also write a PCA false-colour PNG")
    e.add_argument("--overwrite", action="store_true", help="replace an existing store")
    e.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into --out: only the regions not yet "
                   "on disk are computed (refused, naming the option, if the inputs or "
                   "options differ; with --overwrite: start over in place)")
    e.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    e.add_argument("--dry-run", action="store_true",
                   help="print the cost plan (area, windows, FLOPs, bytes, estimated time "
                   "from a one-chunk probe) and write nothing")
    e.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the traceback of an error (default: one line)")
    e.set_defaults(func=_embed)

    m = sub.add_parser("models", help="list registered models")
    m.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'skysense-*'")
    m.add_argument("-v", "--verbose", action="store_true", help="bands, window, stride, features")
    m.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the traceback of an error (default: one line)")
    m.set_defaults(func=_models)

    t = sub.add_parser("train", help="pretrain an encoder from a TOML config",
                       description="Pretrain an encoder as CONFIG describes: checkpoints and "
                       "metrics.jsonl go to [output] checkpoint_dir; a rerun resumes.")
    t.add_argument("config", help="TOML run config (e.g. xsky/train/recipes/default.toml)")
    t.add_argument("--steps", type=int, help="override [fit] steps")
    t.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over instead of resuming from the newest checkpoint")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    t.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the traceback of an error (default: one line)")
    t.set_defaults(func=_train)
    return p


#: exit statuses: 0 success, 2 a usage error (bad flags or values: ArgumentError, argparse),
#: 1 a data or runtime error (DataError, CheckpointError, ModelError, ...)
EXIT_USAGE, EXIT_DATA = 2, 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xsky`` command line; returns the exit status.

    0 on success; 2 for a usage error (invalid flags or values, :class:`ArgumentError`);
    1 for a data or runtime error (:class:`DataError`, :class:`CheckpointError`,
    :class:`ModelError`, an unreadable file, ...). Errors print one line on stderr; ``--debug``
    prints the traceback as well.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ArgumentError as err:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"xsky {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"xsky {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            import traceback

            traceback.print_exc()
        kind = "error" if isinstance(err, XSkyError) else f"error ({type(err).__name__})"
        hint = "" if isinstance(err, XSkyError) or args.debug else " (--debug: traceback)"
        print(f"xsky {args.command}: {kind}: {_one_line(err)}{hint}", file=sys.stderr)
        return EXIT_DATA


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
