"""Data access: STAC loading, scaling and masks (band aliases live in :mod:`xsky.modalities`)."""

from ..modalities import canonical_band, get, match_bands

S2_BANDS = get("s2").bands

__all__ = ["S2_BANDS", "canonical_band", "match_bands"]
