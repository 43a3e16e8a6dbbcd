"""Writing result stores without losing data.

xsky overwrites only what it wrote itself and never leaves a half-written result in place
of a good one:

- a store xsky writes carries a marker: the ``xsky_store`` attribute of its root (the Zarr
  group's attributes, or a NetCDF file's global attributes), so the store holds nothing a
  Zarr or NetCDF reader does not know;
- :func:`check_target` refuses an existing path unless ``overwrite=True`` *and* the path is
  a store xsky wrote; a directory or file without the marker is never replaced;
- :func:`atomic_store` hands out a temporary sibling to write into, and only when the write
  succeeded swaps it into place (the previous result is removed after the swap). A failed or
  interrupted write leaves the previous result as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..exceptions import ArgumentError

__all__ = ["MARKER", "NETCDF_ATTR", "atomic_file", "atomic_store", "check_target", "is_xsky_store",
           "mark"]

#: root attribute of the stores xsky created (Zarr group attrs, NetCDF global attrs)
MARKER = "xsky_store"
NETCDF_ATTR = MARKER  # the same attribute; NetCDF writers set it themselves
_MARK_TEXT = "written by xsky; xsky may overwrite this store"


def is_xsky_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a store xsky wrote (its marker is there)."""
    p = Path(path)
    if p.is_dir():
        return _zarr_marked(p)
    if p.is_file():
        return _netcdf_marked(p)
    return False


def _zarr_marked(p: Path) -> bool:
    try:
        import zarr

        return MARKER in zarr.open_group(str(p), mode="r").attrs
    except Exception:  # not a Zarr store (or unreadable): not ours
        return False


def _netcdf_marked(p: Path) -> bool:
    try:
        import netCDF4

        with netCDF4.Dataset(p) as nc:
            return NETCDF_ATTR in nc.ncattrs()
    except Exception:  # not a NetCDF file (or unreadable): not ours
        return False


def mark(path: str | os.PathLike[str]) -> None:
    """Mark a freshly written Zarr store as xsky's (NetCDF files are written with the
    attribute). Consolidated metadata, if the store has it, is consolidated again."""
    p = Path(path)
    if not p.is_dir():
        return
    import zarr

    group = zarr.open_group(str(p), mode="r+")
    group.attrs[MARKER] = _MARK_TEXT
    if has_consolidated_metadata(p):
        import warnings

        with warnings.catch_warnings():  # zarr 3: "not part of the v3 specification" (known)
            warnings.filterwarnings("ignore", "Consolidated metadata is currently not part")
            zarr.consolidate_metadata(str(p))


def has_consolidated_metadata(path: str | os.PathLike[str]) -> bool:
    """Whether the Zarr store at ``path`` has consolidated metadata (zarr 3: in the root
    ``zarr.json``; zarr 2: a ``.zmetadata`` file)."""
    p = Path(path)
    if (p / ".zmetadata").is_file():
        return True
    try:
        meta = json.loads(_read(p / "zarr.json") or "null")
    except ValueError:
        return False
    return isinstance(meta, dict) and bool(meta.get("consolidated_metadata"))


def _read(f: Path) -> str:
    try:
        return f.read_text()
    except OSError:
        return ""


def check_target(path: str | os.PathLike[str], *, overwrite: bool, what: str = "output") -> Path:
    """Check, before any work, that ``path`` may be written.

    Raises
    ------
    ArgumentError
        ``path`` exists and ``overwrite`` is false; or it exists but is not a store xsky wrote
        (xsky never replaces what it did not create); or its folder cannot be written.
    """
    p = Path(path).expanduser()
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise ArgumentError(
                f"{what} {str(p)!r} exists; pass overwrite=True (--overwrite) to replace it, "
                "or choose another path"
            )
        if not is_xsky_store(p):
            kind = "directory" if p.is_dir() else "file"
            raise ArgumentError(
                f"{what} {str(p)!r} is an existing {kind} that xsky did not write (no "
                f"{MARKER!r} attribute), so xsky will not replace it even with overwrite; "
                "remove it yourself or choose another path"
            )
    _check_writable(p, what)
    return p


def _check_writable(p: Path, what: str) -> None:
    """Create and remove a file in the nearest existing folder above ``p``: ``os.access``
    alone is not enough (it says yes to root, also on read-only mounts and under /proc)."""
    anc = p.parent if str(p.parent) else Path(".")
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ArgumentError(
            f"{what} {str(p)!r} cannot be written: {str(anc)!r} is a file, not a folder; "
            "choose another path"
        )
    try:
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as err:
        raise ArgumentError(
            f"{what} {str(p)!r} cannot be written: {str(anc)!r} is not writable "
            f"({err.strerror}); choose another path"
        ) from None


@contextlib.contextmanager
def atomic_store(path: str | os.PathLike[str], *, overwrite: bool,
                 what: str = "output") -> Iterator[Path]:
    """Write a store through a temporary sibling, swapped into place on success.

    Use as ``with atomic_store(path, overwrite=...) as tmp: ds.to_zarr(tmp)``. On success the
    store is marked as xsky's (a NetCDF file must be written with the global attribute
    :data:`NETCDF_ATTR` set, which this function checks) and replaces ``path`` (an earlier xsky store there is removed
    after the swap); on any error the temporary is removed and ``path`` is untouched.
    """
    final = check_target(path, overwrite=overwrite, what=what)
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = final.with_name(f".{final.name}.xsky-tmp-{token}")
    old = final.with_name(f".{final.name}.xsky-old-{token}")
    try:
        yield tmp
        if not tmp.exists():
            raise ArgumentError(f"nothing was written to {str(tmp)!r}")
        if tmp.is_file() and not _netcdf_marked(tmp):
            raise AssertionError(f"a NetCDF store must be written with attrs[{NETCDF_ATTR!r}]")
        mark(tmp)
        if final.exists():
            os.replace(final, old)  # keep the previous result until the new one is in place
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        if old.exists() and not final.exists():
            os.replace(old, final)  # put the previous result back
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_file(final: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary sibling of the file ``final`` to write, moved onto ``final`` on success.

    On any error the temporary is removed and ``final`` is left as it was (checking that
    ``final`` may be replaced is the caller's: :func:`check_target`). ``suffix`` keeps
    drivers that go by the extension (GDAL) happy."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.xsky-tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
