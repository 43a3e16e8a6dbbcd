"""Argument checks shared by the public functions and the command line.

Each argument is normalised once, where it enters xsky (like dask's ``coerce_depth``), and a
bad value raises an :class:`~xsky.exceptions.ArgumentError` that names the argument, what was
given and what is accepted. Nothing here touches data or hardware.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .exceptions import ArgumentError, ChunkingError, format_choices

__all__ = [
    "EDGES",
    "FLOAT_DTYPES",
    "PRECISIONS",
    "bbox",
    "chunks_spec",
    "device",
    "edge",
    "float_dtype",
    "float_values",
    "optional_positive_int",
    "output_chunks",
    "overlap",
    "positive_float",
    "positive_int",
    "precision",
    "resources",
    "time_range",
]

EDGES = ("reflect", "pad")
PRECISIONS = ("float32", "bfloat16")
FLOAT_DTYPES = ("float64", "float32")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def positive_int(value: Any, name: str, unit: str = "") -> int:
    """``value`` as an ``int`` >= 1."""
    if not _is_int(value) or value < 1:
        what = f"a positive integer{unit and ' number of ' + unit}"
        raise ArgumentError(f"{name} must be {what}, got {value!r}")
    return int(value)


def optional_positive_int(value: Any, name: str, default: int) -> int:
    """``default`` for ``None``, else :func:`positive_int`."""
    if value is None:
        return default
    if not _is_int(value) or value < 1:
        raise ArgumentError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def positive_float(value: Any, name: str) -> float:
    """``value`` as a finite ``float`` > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not math.isfinite(float(value)) or value <= 0:
        raise ArgumentError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def device(value: Any) -> str:
    """A ``device`` argument as a lower-case string, without touching the hardware.

    ``None`` means ``"auto"``; a ``torch.device`` is accepted.
    """
    if value is None:
        return "auto"
    if hasattr(value, "type") and hasattr(value, "index"):  # torch.device
        value = str(value)
    if not isinstance(value, str) or not _DEVICE_RE.match(value.strip().lower()):
        raise ArgumentError(
            f"device={value!r} is not understood; use one of "
            f"{format_choices(['auto', 'cpu', 'cuda', 'cuda:0', 'mps'])}"
        )
    return value.strip().lower()


def precision(value: Any) -> str:
    """``"float32"`` or ``"bfloat16"``."""
    if value not in PRECISIONS:
        raise ArgumentError(
            f"precision={value!r} is not supported; choose one of {format_choices(PRECISIONS)}"
        )
    return str(value)


def edge(value: Any) -> str:
    """``"reflect"`` or ``"pad"``."""
    if value not in EDGES:
        raise ArgumentError(f"edge={value!r} is not supported; choose one of {format_choices(EDGES)}")
    return str(value)


def overlap(value: Any) -> int:
    """An ``overlap`` in pixels (its range depends on the model: the planner checks that)."""
    if not _is_int(value):
        raise ArgumentError(f"overlap must be an integer number of pixels, got {value!r}")
    return int(value)


def float_dtype(value: Any, default: str = "float64") -> np.dtype[Any]:
    """``"float64"`` or ``"float32"`` (or the numpy dtypes) as a numpy dtype."""
    try:
        key = np.dtype(value).name if value is not None else default
    except TypeError:
        key = repr(value)
    if key not in FLOAT_DTYPES:
        raise ArgumentError(f"dtype must be one of {format_choices(FLOAT_DTYPES)}, got {value!r}")
    return np.dtype(key)


def resources(value: Any) -> dict[str, float]:
    """Dask resources a task needs: a non-empty ``{name: positive amount}``."""
    if not isinstance(value, Mapping) or not value or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        for k, v in value.items()
    ):
        raise ArgumentError(
            f"resources must be a non-empty dict of resource name -> positive amount, such as "
            f"{{'GPU': 1}}; got {value!r}"
        )
    return {k: float(v) for k, v in value.items()}


def output_chunks(value: Any, ydim: str, xdim: str) -> tuple[int | None, int | None]:
    """``chunks=`` of a spatial output: ``None``, an int, or ``{ydim: n, xdim: n}``."""
    if value is None:
        return None, None
    if _is_int(value):
        n = positive_int(value, "chunks", "output pixels")
        return n, n
    if isinstance(value, Mapping):
        unknown = set(value) - {ydim, xdim}
        if unknown:
            raise ChunkingError(
                f"chunks has dims {sorted(unknown)} but the output's spatial dims are "
                f"{ydim!r} and {xdim!r}"
            )
        got = [value.get(d) for d in (ydim, xdim)]
        cy, cx = (None if v is None else positive_int(v, f"chunks[{d!r}]", "output pixels")
                  for v, d in zip(got, (ydim, xdim), strict=True))
        return cy, cx
    raise ChunkingError(
        f"chunks must be an int or a dict {{{ydim!r}: n, {xdim!r}: n}} of output pixels, got "
        f"{value!r}"
    )


def chunks_spec(text: str | None, dims: Sequence[str] = ("time", "y", "x")) -> dict[str, int] | None:
    """A command-line chunk spec: ``"512"`` (y and x) or ``"x=512,y=512,time=1"``."""
    if text is None:
        return None
    out: dict[str, int] = {}
    try:
        if "=" not in text:
            n = int(text)
            out = {"y": n, "x": n}
        else:
            for part in text.split(","):
                k, v = part.split("=")
                out[k.strip()] = int(v)
    except ValueError as err:
        raise ArgumentError(
            f"--chunks must be an int or 'x=512,y=512,time=1', got {text!r}"
        ) from err
    unknown = set(out) - set(dims)
    if unknown:
        raise ArgumentError(
            f"--chunks names dimension(s) {sorted(unknown)}; use {format_choices(dims)}"
        )
    bad = {k: v for k, v in out.items() if v < 1 and v != -1}
    if bad:
        raise ArgumentError(f"--chunks sizes must be positive (or -1 for one chunk), got {bad}")
    return out


def bbox(value: Any, name: str = "bbox") -> tuple[float, float, float, float] | None:
    """A lon/lat ``(min lon, min lat, max lon, max lat)`` box in degrees, or ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ArgumentError(
            f"{name} must be 4 numbers (min lon, min lat, max lon, max lat), got {value!r}"
        ) from err
    if len(vals) != 4:
        raise ArgumentError(
            f"{name} must be 4 numbers (min lon, min lat, max lon, max lat), got {len(vals)}: "
            f"{value!r}"
        )
    x0, y0, x1, y1 = vals
    if not all(math.isfinite(v) for v in vals):
        raise ArgumentError(f"{name} {value!r} contains NaN or inf")
    if x0 >= x1 or y0 >= y1:
        raise ArgumentError(
            f"{name} {value!r} is empty or inverted: expected (min lon, min lat, max lon, max lat) "
            "with min < max"
        )
    if not (-180 <= x0 <= 180 and -180 <= x1 <= 180 and -90 <= y0 <= 90 and -90 <= y1 <= 90):
        raise ArgumentError(
            f"{name} {value!r} is outside lon [-180, 180] / lat [-90, 90]; {name} is in degrees "
            "(EPSG:4326), not in the CRS of the data"
        )
    return x0, y0, x1, y1


def time_range(value: Any) -> tuple[Any, Any] | None:
    """``"2020-01-01/2020-06-30"``, ``("2020-01", "2020-06")`` or ``"2020"`` as a UTC
    ``(start, end)`` pair of :class:`pandas.Timestamp` (open ends: ``".."`` or ``None``)."""
    import pandas as pd

    if value is None:
        return None
    if isinstance(value, str):
        parts: list[Any] = value.split("/") if "/" in value else [value, value]
    elif isinstance(value, Sequence) and len(value) == 2:
        parts = list(value)
    else:
        raise ArgumentError(
            f"time must be 'start/end', a (start, end) pair or one date, got {value!r}"
        )
    if len(parts) != 2:
        raise ArgumentError(f"time must be 'start/end' with one '/', got {value!r}")
    out = []
    for k, p in enumerate(parts):
        if p in (None, "", ".."):
            edge_ts = pd.Timestamp.min if k == 0 else pd.Timestamp.max
            out.append(edge_ts.tz_localize("UTC"))
            continue
        try:
            per = pd.Period(str(p)) if isinstance(p, str) and len(str(p)) <= 10 else None
            ts = pd.Timestamp(p)
        except (ValueError, TypeError) as err:
            raise ArgumentError(f"time bound {p!r} is not a date: {err}") from err
        if per is not None and k == 1:
            ts = per.end_time  # '2020-06' means until the end of June
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        out.append(ts)
    if out[0] > out[1]:
        raise ArgumentError(f"time range {value!r} ends before it starts")
    return out[0], out[1]


def float_values(value: Any, name: str, unit: str = "") -> np.ndarray:
    """``value`` as a float64 numpy array, refusing text, booleans and other non-numbers.

    Numbers stored as text (``"48.85"``, a CSV column read without parsing) are refused
    too: they are usually a column that was not parsed as intended.
    """
    arr = np.asarray(value)
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64)
    flat = arr.ravel()
    none = object()
    bad = next((v for v in flat if isinstance(v, bool | np.bool_) or not isinstance(
        v, int | float | np.integer | np.floating)), none)
    if bad is none:
        if arr.dtype.kind == "O" or not flat.size:
            return arr.astype(np.float64)  # plain numbers in an object array, or empty
        bad = flat[0]
    shown = bad.item() if isinstance(bad, np.generic) else bad
    what = f" (in {unit})" if unit else ""
    raise ArgumentError(
        f"{name} must be numbers{what}, got {arr.dtype} values such as {shown!r}; convert "
        "them first, e.g. with pandas.to_numeric(values) or np.asarray(values, dtype=float)"
    )
