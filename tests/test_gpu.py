"""GPU paths: the same results on CUDA as on the CPU (``-m gpu``; skipped without CUDA).

Run on a machine with a GPU: ``python -m pytest -m gpu tests/test_gpu.py``. The default
``addopts`` leave them out (``-m 'not gpu'``), and conftest skips them where torch sees no
CUDA device. TF32 is switched off so float32 on the GPU is comparable with the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xsky
from xsky.models import create_model
from xsky.testing import synthetic_s2_cube

from .conftest import assert_close_nan

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.fixture(scope="module")
def cube():
    return synthetic_s2_cube(40, 40, 2, seed=11, valid_fraction=0.9).chunk(time=1, y=20, x=20)


def test_test_tiny_on_cuda_matches_the_cpu(cube):
    cpu = xsky.embed(cube, "test-tiny", device="cpu").values
    gpu = xsky.embed(cube, "test-tiny", device="cuda").values
    auto = xsky.embed(cube, "test-tiny", device="auto").values
    assert_close_nan(gpu, cpu, 1e-5)  # float32 on both (no TF32)
    np.testing.assert_array_equal(auto, gpu)  # auto picks the GPU


def test_bfloat16_on_cuda_stays_near_float32(cube):
    cpu = xsky.embed(cube, "test-tiny", device="cpu").values
    bf16 = xsky.embed(cube, "test-tiny", device="cuda", precision="bfloat16").values
    # as on the CPU (0.0069 reached there): 8 mantissa bits on outputs up to ~1.5
    assert_close_nan(bf16, cpu, 0.03)
    assert np.nanmax(np.abs(bf16 - cpu)) > 1e-5  # really ran in bf16


def test_skysense_and_satclip_on_cuda_match_the_cpu():
    tree = xsky.stack(s2=synthetic_s2_cube(16, 16, 2, seed=1, bands=(
        "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")))
    a = xsky.embed(tree, "skysense-tiny", device="cpu").values
    b = xsky.embed(tree, "skysense-tiny", device="cuda").values
    assert_close_nan(b, a, 1e-4)
    from xsky.models.satclip import S2_BANDS

    s2 = synthetic_s2_cube(128, 128, 1, seed=2, bands=S2_BANDS)
    c = xsky.embed(s2, "satclip-resnet18-l10", window=64, device="cpu").values
    d = xsky.embed(s2, "satclip-resnet18-l10", window=64, device="cuda").values
    assert_close_nan(d, c, 1e-4 * max(1.0, float(np.nanmax(np.abs(c)))))


def test_the_cache_keeps_one_copy_per_device(isolated_cache):
    ref = create_model("test-tiny").ref
    gpu = isolated_cache.get_model(ref, "cuda")
    cpu = isolated_cache.get_model(ref, "cpu")
    assert gpu is not cpu and isolated_cache.get_model(ref, "cuda") is gpu
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    assert all(p.device.type == "cpu" for p in cpu.parameters())
    assert gpu.weights_sha256 == cpu.weights_sha256


def test_spherical_harmonics_on_cuda_match_the_numba_kernel():
    from xsky.models._sh import spherical_harmonics, spherical_harmonics_torch

    rng = np.random.default_rng(0)
    lonlat = np.stack([rng.uniform(-180, 180, 500), rng.uniform(-90, 90, 500)], 1)
    ref = spherical_harmonics(lonlat[:, 0], lonlat[:, 1], 40)
    got = spherical_harmonics_torch(torch.from_numpy(lonlat).cuda(), 40)
    assert got.device.type == "cuda" and got.dtype == torch.float64
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=0, atol=1e-11)


def test_fit_on_cuda_follows_the_cpu_losses_and_bfloat16_trains():
    """The training loop on the GPU: float32 near the CPU's losses; bf16 AMP finite."""
    from xsky.train import fit

    from .train.test_loop import setup

    runs = {}
    for device, precision in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")):
        model, sampler, objs = setup()
        runs[(device, precision)] = fit(model, sampler, objs, steps=3, device=device,
                                        precision=precision, progress=False)["loss"]
    np.testing.assert_allclose(runs[("cuda", "float32")], runs[("cpu", "float32")], rtol=2e-3)
    assert np.isfinite(runs[("cuda", "bfloat16")]).all()
