"""Data access: band aliases, scaling, masks and sample data."""

from .bands import S2_BANDS, canonical_band, match_bands

__all__ = ["S2_BANDS", "canonical_band", "match_bands"]
