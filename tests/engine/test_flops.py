"""FlopCounter: hand-counted products, convolutions, attention and einsum, and the same
total as torch's dispatcher-level FlopCounterMode on a real model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xsky.engine.flops import FlopCounter


def count(fn) -> int:
    with torch.inference_mode(), FlopCounter() as c:
        fn()
    return c.total


def test_matrix_products_count_two_flops_per_multiply_add():
    a, b = torch.ones(2, 3, 4), torch.ones(2, 4, 5)
    assert count(lambda: a @ b) == 2 * 2 * 3 * 4 * 5
    assert count(lambda: torch.bmm(a, b)) == 2 * 2 * 3 * 4 * 5
    assert count(lambda: torch.mm(a[0], b[0])) == 2 * 3 * 4 * 5
    assert count(lambda: torch.addmm(torch.ones(3, 5), a[0], b[0])) == 2 * 3 * 4 * 5
    assert count(lambda: torch.einsum("bij,bjk->bik", a, b)) == 2 * 2 * 3 * 4 * 5
    assert count(lambda: a + 1) == 0  # elementwise work is left out


def test_linear_convolution_and_attention_by_hand():
    lin = torch.nn.Linear(8, 6)
    x = torch.ones(5, 7, 8)
    assert count(lambda: lin(x)) == 2 * 5 * 7 * 8 * 6
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, groups=1)
    img = torch.ones(2, 3, 10, 10)
    assert count(lambda: conv(img)) == 2 * (2 * 4 * 10 * 10) * (3 * 3 * 3)
    grouped = torch.nn.Conv2d(4, 8, 3, groups=2)
    assert count(lambda: grouped(torch.ones(1, 4, 5, 5))) == 2 * (8 * 3 * 3) * (2 * 3 * 3)
    q, k, v = torch.ones(2, 4, 9, 16), torch.ones(2, 4, 11, 16), torch.ones(2, 4, 11, 8)
    # Q K^T: 2*L*S*E per head, A V: 2*L*S*Ev per head
    assert count(lambda: F.scaled_dot_product_attention(q, k, v)) == \
        2 * 4 * (2 * 9 * 11 * 16 + 2 * 9 * 11 * 8)


def test_a_real_encoder_counts_what_torchs_flop_counter_counts():
    from torch.utils.flop_counter import FlopCounterMode

    from xsky.models import create_model

    net = create_model("test-tiny").eval()
    inputs = {"s2": torch.randn(3, 4, 16, 16), "s2_valid": torch.ones(3, 16, 16, dtype=bool)}
    with torch.inference_mode():
        ours = count(lambda: net.embed_windows(inputs))
        with FlopCounterMode(display=False) as ref:
            net.embed_windows(inputs)
    assert ours == ref.get_total_flops() > 0
