"""The kernel's per-batch normalisation (``_normalise``) called directly: the values and
pixel flags it returns, with and without per-band validity."""

from __future__ import annotations

import torch

from xsky.engine.kernel import ModalityInput, _normalise
from xsky.modalities import Conversion


def _mod(**kw):
    base = {"name": "s2", "n_bands": 2, "grid_factor": 1,
            "conversion": Conversion("identity"), "mean": (0.5, 1.0), "std": (2.0, 4.0)}
    return ModalityInput(**{**base, **kw})


def _batch():
    """(B=3, C=2, T=2, H=1, W=2) values with NaN in single bands, and pixel flags."""
    x = torch.arange(24, dtype=torch.float32).reshape(3, 2, 2, 1, 2)
    x[0, 0, 0, 0, 0] = float("nan")                # one band of one pixel
    x[1, :, 1, 0, 1] = float("nan")                # every band of one pixel
    v = torch.ones(3, 2, 1, 2, dtype=torch.bool)
    v[2, 0, 0, 1] = False                          # a pixel flagged invalid upstream
    return x, v


def test_band_mask_flags_a_pixel_valid_when_any_of_its_bands_is():
    x, v = _batch()
    y, vb, band = _normalise(x.clone(), v.clone(), _mod(), torch, band_mask=True)
    expect_band = torch.isfinite(x) & v[:, None]
    assert torch.equal(band, expect_band)
    assert vb.shape == v.shape == (3, 2, 1, 2)
    assert torch.equal(vb, expect_band.any(dim=1))
    assert not vb[1, 1, 0, 1] and not vb[2, 0, 0, 1] and vb[0, 0, 0, 0]
    # a valid band keeps its normalised value, an invalid one becomes 0 (the band mean)
    assert y[0, 0, 0, 0, 0] == 0 and y[0, 1, 0, 0, 0] == (x[0, 1, 0, 0, 0] - 1.0) / 4.0


def test_without_band_mask_an_invalid_pixel_zeroes_every_band():
    x, v = _batch()
    v = v & torch.isfinite(x).all(dim=1)  # as the kernel passes them
    y, vb, band = _normalise(torch.nan_to_num(x), v.clone(), _mod(), torch)
    assert band is None and torch.equal(vb, v)
    assert torch.equal(y[0, :, 0, 0, 0], torch.zeros(2))
    assert y[0, 0, 1, 0, 0] == (x[0, 0, 1, 0, 0] - 0.5) / 2.0


def test_non_positive_backscatter_is_invalid_with_and_without_band_mask():
    x = torch.tensor([0.1, 0.0, -0.2, 0.4]).reshape(1, 1, 1, 1, 4).repeat(1, 2, 1, 1, 1)
    x[0, 1, 0, 0, 0] = 0.3                          # second band positive everywhere but 1
    x[0, 1, 0, 0, 1] = 0.2
    v = torch.ones(1, 1, 1, 4, dtype=torch.bool)
    mod = _mod(conversion=Conversion("lin2db"), mean=None, std=None)
    _, vb, _ = _normalise(x.clone(), v.clone(), mod, torch)
    assert vb.flatten().tolist() == [True, False, False, True]   # any band <= 0: invalid
    _, vb, band = _normalise(x.clone(), v.clone(), mod, torch, band_mask=True)
    assert band[0, 0].flatten().tolist() == [True, False, False, True]
    assert vb.flatten().tolist() == [True, True, False, True]   # band 2 still valid at 1
