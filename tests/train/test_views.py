"""Augmented views: the geometric transform and its inverse, date dropout, determinism."""

from __future__ import annotations

import itertools

import pytest
import torch

from xsky.exceptions import ArgumentError, DimensionError
from xsky.train.views import View, align, make_views

W, G = 8, 32  # window (reference pixels) and the HR grid factor



def _batch(b: int = 4, t: int = 3, seed: int = 0, hr: bool = True) -> dict[str, torch.Tensor]:
    """A batch whose values encode the ground position: s2 pixel (y, x) of window i holds
    i*1000 + y*W + x in band 0, and every HR pixel of the 32x32 block over it the same."""
    g = torch.Generator().manual_seed(seed)
    ground = (torch.arange(b)[:, None, None] * 1000
              + torch.arange(W * W).view(1, W, W)).float()  # (B, W, W)
    s2 = torch.randn(b, 4, t, W, W, generator=g)
    s2[:, 0] = ground[:, None]
    valid = torch.rand(b, t, W, W, generator=g) > 0.2
    valid[0, 1] = False  # a date invalid over the whole of window 0
    s2 = s2 * valid[:, None]
    batch = {
        "s2": s2, "s2_valid": valid,
        "s2_doy": torch.tensor([[10, 100, 200]] * b), "s2_month": torch.tensor([[0, 3, 6]] * b),
        "srtm": torch.randn(b, 1, W, W, generator=g),
        "srtm_valid": torch.ones(b, W, W, dtype=torch.bool),
        "latlon": torch.tensor([[45.0, 25.0]] * b, dtype=torch.float64),
        "window": torch.arange(4 * b).view(b, 4),
    }
    if hr:
        block = ground.repeat_interleave(G, 1).repeat_interleave(G, 2)  # (B, 32W, 32W)
        batch["hr"] = block[:, None, None].expand(b, 3, 1, W * G, W * G).clone()
        batch["hr_valid"] = torch.ones(b, 1, W * G, W * G, dtype=torch.bool)
    return batch


def _all_views(b: int = 8) -> View:
    codes = list(itertools.product([False, True], range(4)))
    return View(torch.tensor([f for f, _ in codes]), torch.tensor([k for _, k in codes]))


def test_align_inverts_every_symmetry_exactly():
    view = _all_views()
    x = torch.randn(8, 5, W, W)
    m = torch.rand(8, W, W) > 0.5
    assert torch.equal(align(view.apply(x), view), x)
    assert torch.equal(align(view.apply(m), view), m)
    # the 8 codes are the 8 different symmetries of the square
    y = view.apply(torch.arange(W * W).float().view(1, 1, W, W).expand(8, 1, W, W))
    assert len({tuple(v.flatten().tolist()) for v in y}) == 8


def test_apply_is_flip_then_quarter_turns():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    view = View(torch.tensor([True]), torch.tensor([1]))
    assert torch.equal(view.apply(x), torch.rot90(x.flip(-1), 1, dims=(-2, -1)))


def test_align_is_differentiable():
    view = _all_views()
    x = torch.randn(8, 3, W, W, requires_grad=True)
    w = torch.randn(8, 3, W, W)
    (align(view.apply(x), view) * w).sum().backward()
    assert torch.equal(x.grad, w)


def test_views_keep_pixel_correspondence_across_modalities():
    batch = _batch()
    views = make_views(batch, 3, generator=torch.Generator().manual_seed(3), date_dropout=0,
                       noise=0, jitter=0)
    seen = set()
    for inputs, view in views:
        seen.update(zip(view.flip.tolist(), view.k.tolist(), strict=True))
        # back on the canonical grid, every input is the original one
        assert torch.equal(view.invert(inputs["s2"]), batch["s2"])
        assert torch.equal(view.invert(inputs["hr"]), batch["hr"])
        assert torch.equal(view.invert(inputs["srtm"]), batch["srtm"])
        assert torch.equal(view.invert(inputs["s2_valid"]), batch["s2_valid"])
        # in the view, each HR 32x32 block lies over the S2 pixel of the same ground position
        ground = view.apply(batch["hr"][:, 0, 0, ::G, ::G])  # ground id per view pixel
        hr = inputs["hr"][:, 0, 0]
        assert torch.equal(hr, ground.repeat_interleave(G, 1).repeat_interleave(G, 2))
        ok = inputs["s2_valid"][:, 0]
        assert torch.equal(inputs["s2"][:, 0, 0][ok], ground[ok])
        # dates, locations and window ids are untouched
        assert inputs["s2_doy"] is batch["s2_doy"] and inputs["latlon"] is batch["latlon"]
        assert inputs["window"] is batch["window"]
    assert len(seen) > 1  # the windows got different transforms


def test_date_dropout_keeps_a_valid_date_per_window():
    batch = _batch(b=6, hr=False)
    batch["s2_valid"][5] = False  # a window without any valid date stays so
    batch["s2"][5] = 0
    (inputs, view), = make_views(batch, 1, generator=torch.Generator().manual_seed(0),
                                 date_dropout=1.0, noise=0, jitter=0, flips=False,
                                 rotations=False)
    had = batch["s2_valid"].flatten(2).any(2)
    has = inputs["s2_valid"].flatten(2).any(2)
    assert has[:5].sum(1).tolist() == [1] * 5 and not has[5].any()
    assert bool((has <= had).all())
    dropped = view.dropped["s2"]
    assert torch.equal(dropped, had & ~has)
    # a dropped date is invalid and 0 in every band; kept dates are unchanged
    keep = ~dropped[:, None, :, None, None]
    assert torch.equal(inputs["s2"], batch["s2"] * keep)
    # the static modality has no dates to drop
    assert "srtm" not in view.dropped and torch.equal(inputs["srtm"], batch["srtm"])


def test_date_dropout_rate_is_roughly_the_asked_rate():
    batch = _batch(b=64, t=3, hr=False)
    batch["s2_valid"][:] = True
    (_, view), = make_views(batch, 1, generator=torch.Generator().manual_seed(1),
                            date_dropout=0.25, noise=0, jitter=0)
    assert 0.15 < view.dropped["s2"].float().mean().item() < 0.35


def test_photometric_noise_only_touches_valid_values():
    batch = _batch(hr=False)
    (inputs, view), = make_views(batch, 1, generator=torch.Generator().manual_seed(0),
                                 date_dropout=0, noise=0.5, jitter=0.2)
    x = view.invert(inputs["s2"])
    valid = batch["s2_valid"][:, None].expand_as(x)
    assert bool((x[~valid] == 0).all())
    assert bool((x[valid] != batch["s2"][valid]).all())


def test_same_seed_same_views_and_other_seed_other_views():
    batch = _batch()

    def run(seed: int) -> list:
        return make_views(batch, 2, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    for (ia, va), (ib, vb) in zip(a, b, strict=True):
        assert torch.equal(va.flip, vb.flip) and torch.equal(va.k, vb.k)
        assert torch.equal(va.dropped["s2"], vb.dropped["s2"])
        for key in ia:
            assert torch.equal(ia[key], ib[key]), key
    assert not all(torch.equal(ia["s2"], ic["s2"]) for (ia, _), (ic, _) in zip(a, c, strict=True))


def test_band_valid_and_per_pixel_latlon_are_transformed():
    batch = _batch(hr=False)
    batch["s2_band_valid"] = batch["s2_valid"][:, None].expand(-1, 4, -1, -1, -1).clone()
    batch["s2_band_valid"][:, 1] = False
    batch["latlon"] = torch.randn(4, 2, W, W, dtype=torch.float64)
    (inputs, view), = make_views(batch, 1, generator=torch.Generator().manual_seed(2),
                                 date_dropout=0, noise=0.1, jitter=0)
    assert torch.equal(view.invert(inputs["s2_band_valid"]), batch["s2_band_valid"])
    assert torch.equal(align(inputs["latlon"], view), batch["latlon"])
    # values of a band flagged invalid stay 0 under noise
    assert bool((view.invert(inputs["s2"])[:, 1] == 0).all())


def test_errors_say_what_is_wrong():
    batch = _batch(hr=False)
    with pytest.raises(ArgumentError, match=r"torch\.Generator"):
        make_views(batch, 2, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="date_dropout"):
        make_views(batch, 2, generator=torch.Generator(), date_dropout=1.5)
    with pytest.raises(DimensionError, match="square"):
        View.identity(2).apply(torch.zeros(2, 3, 4, 5))
    with pytest.raises(DimensionError, match="samples"):
        View.identity(2).apply(torch.zeros(3, 4, 4))
