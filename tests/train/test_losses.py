"""The CLIP objective SatCLIP trains with."""

from __future__ import annotations

import math

import pytest
import torch

from xsky.exceptions import DimensionError
from xsky.train import CLIPLoss, clip_loss
from xsky.train.losses import INIT_LOGIT_SCALE


def test_clip_loss_matches_hand_computed_two_pair_case():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loc = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # normalised: (1, 0) and (1, 1)/sqrt(2)
    s = 1 / 0.07
    r = 1 / math.sqrt(2)
    # cosine matrix [[1, r], [0, r]]; rows: image -> location, columns: location -> image
    row0 = math.log(1 + math.exp(s * (r - 1)))
    row1 = math.log(1 + math.exp(-s * r))
    col0 = math.log(1 + math.exp(-s))
    col1 = math.log(2.0)
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    got = clip_loss(img, loc, logit_scale=math.log(1 / 0.07))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_clip_loss_is_symmetric_and_scale_invariant_in_features():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    torch.testing.assert_close(clip_loss(a, b), clip_loss(b, a))
    torch.testing.assert_close(clip_loss(3 * a, 0.5 * b), clip_loss(a, b))
    # aligned pairs with a sharp temperature give ~0; a shuffled pairing does not
    assert clip_loss(a, a, logit_scale=8.0) < 1e-3
    assert clip_loss(a, a.roll(1, 0), logit_scale=8.0) > 1.0


def test_clip_module_has_learnable_temperature_initialised_to_ln_1_over_0_07():
    loss_fn = CLIPLoss()
    assert loss_fn.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert abs(INIT_LOGIT_SCALE - 2.659260) < 1e-6
    img = torch.randn(4, 8, requires_grad=True)
    loc = torch.randn(4, 8, dtype=torch.float64)  # SatCLIP's location side is float64
    loss = loss_fn(img, loc)
    assert loss.dtype == torch.float32
    loss.backward()
    assert loss_fn.logit_scale.grad is not None and loss_fn.logit_scale.grad != 0
    assert img.grad is not None
    clamped = CLIPLoss(init_logit_scale=10.0, max_logit_scale=math.log(100))
    torch.testing.assert_close(clamped(img, loc), clip_loss(img, loc, math.log(100)))


def test_clip_loss_rejects_mismatched_batches():
    with pytest.raises(DimensionError, match="same shape"):
        clip_loss(torch.zeros(4, 8), torch.zeros(3, 8))
    with pytest.raises(DimensionError, match=r"\(N, D\)"):
        clip_loss(torch.zeros(4), torch.zeros(4))
    with pytest.raises(DimensionError, match="at least 2"):
        clip_loss(torch.zeros(1, 8), torch.zeros(1, 8))
