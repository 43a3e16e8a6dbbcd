"""Digital numbers to physical values: Sentinel-2 L2A reflectance and Sentinel-1 backscatter.

Sentinel-2 L2A
    ``reflectance = (DN + BOA_ADD_OFFSET) / 10000`` with ``BOA_ADD_OFFSET = -1000`` for
    processing baseline 04.00 and later (products from 2022-01-25 on, and the Collection-1
    reprocessing of older dates), and 0 before. ``DN == 0`` is no data. The baseline is read
    from the item (``s2:processing_baseline``, ``sentinel:processing_baseline``,
    ``processing:version`` or the ``_Nxxyy_`` field of the product id); only when none of these
    exists is the acquisition date used. Earth Search harmonises some products itself and says
    so with ``earthsearch:boa_offset_applied`` (or the older ``sentinel:boa_offset_applied``):
    when true, the files already hold ``DN - 1000`` and no offset is applied again.

Sentinel-1
    Backscatter is returned as ``10·log10(linear)`` (dB) or linear power; linear values ≤ 0
    have no dB value and are marked invalid.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import xarray as xr

from .. import modalities

__all__ = [
    "S2_NODATA",
    "S2_QUANTIFICATION",
    "db_to_linear",
    "linear_to_db",
    "s2_boa_offset",
    "s2_processing_baseline",
    "s2_reflectance",
]

S2_QUANTIFICATION = 10000.0  # L2A quantification value (a processing-baseline fact)
S2_NODATA = int(modalities.get("s2").nodata or 0)  # the table's Sentinel-2 no-data DN
S2_BOA_ADD_OFFSET = 1000  # subtracted from DN for baseline >= 04.00
_BASELINE_CHANGE = datetime(2022, 1, 25, tzinfo=UTC)

_BASELINE_PROPS = (
    "s2:processing_baseline",
    "sentinel:processing_baseline",
    "processing:version",
    "processing_baseline",
)
_OFFSET_APPLIED_PROPS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
_PRODUCT_ID_PROPS = ("s2:product_uri", "sentinel:product_id", "s2:product_id", "product_id")
_BASELINE_IN_ID = re.compile(r"_N(\d{2})(\d{2})(?:_|\.|$)")


def _parse_baseline(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = re.match(r"^\s*N?(\d{1,2})\.?(\d{2})\s*$", str(value))
    if m:
        return int(m.group(1)) + int(m.group(2)) / 100
    return None


def s2_processing_baseline(item_id: str, properties: Mapping[str, Any]) -> float | None:
    """Processing baseline of a Sentinel-2 item as a number (``"04.00"`` → 4.0), or ``None``.

    Looks at the baseline properties of the common catalogues first, then at the
    ``_Nxxyy_`` field of the product id (``..._N0400_...``) in the properties or the item id.
    """
    for key in _BASELINE_PROPS:
        b = _parse_baseline(properties.get(key))
        if b is not None:
            return b
    for text in [*(properties.get(k) for k in _PRODUCT_ID_PROPS), item_id]:
        if isinstance(text, str):
            m = _BASELINE_IN_ID.search(text)
            if m:
                return int(m.group(1)) + int(m.group(2)) / 100
    return None


def s2_boa_offset(item_id: str, properties: Mapping[str, Any], when: datetime | None) -> int:
    """DN offset to subtract before dividing by 10000: 1000 or 0.

    Parameters
    ----------
    item_id, properties
        The STAC item's id and properties.
    when
        Acquisition time, used only when the item states no processing baseline (with a
        warning).
    """
    for key in _OFFSET_APPLIED_PROPS:
        if properties.get(key) is True:
            return 0  # the catalogue already harmonised the files
    baseline = s2_processing_baseline(item_id, properties)
    if baseline is None:
        if when is None:
            return 0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        offset = S2_BOA_ADD_OFFSET if when >= _BASELINE_CHANGE else 0
        warnings.warn(
            f"item {item_id!r} states no processing baseline (s2:processing_baseline); "
            f"assuming {'>= 04.00' if offset else '< 04.00'} from its date {when:%Y-%m-%d} "
            f"(BOA offset {offset})",
            UserWarning,
            stacklevel=4,
        )
        return offset
    return S2_BOA_ADD_OFFSET if baseline >= 4.0 else 0


def s2_reflectance(dn: xr.DataArray, offset: int | xr.DataArray) -> xr.DataArray:
    """Reflectance (float32) from L2A digital numbers; no-data (DN 0) becomes NaN.

    ``offset`` is a scalar or an array that broadcasts against ``dn`` (e.g. one per time).
    """
    x = dn.astype("float32")
    off = offset.astype("float32") if isinstance(offset, xr.DataArray) else np.float32(offset)
    refl = (x - off) / np.float32(S2_QUANTIFICATION)
    return refl.where(dn != S2_NODATA).astype("float32")


def linear_to_db(linear: xr.DataArray) -> xr.DataArray:
    """``10·log10(linear)`` as float32, NaN where ``linear`` is not a positive finite number.

    The formula is :func:`xsky.modalities.conversion` ``("linear", "db")``.
    """
    conv = modalities.conversion("linear", "db", "s1")
    lin = linear.astype("float32")
    ok = cast(xr.DataArray, np.isfinite(lin)) & cast(xr.DataArray, conv.valid(lin))
    # where() first so log10 never sees 0 or negatives (no runtime warnings)
    return cast(xr.DataArray, conv.apply(lin.where(ok))).astype("float32")


def db_to_linear(db: xr.DataArray) -> xr.DataArray:
    """``10 ** (db / 10)`` as float32 (:func:`xsky.modalities.conversion` ``("db", "linear")``)."""
    conv = modalities.conversion("db", "linear", "s1")
    return cast(xr.DataArray, conv.apply(db.astype("float32"))).astype("float32")
