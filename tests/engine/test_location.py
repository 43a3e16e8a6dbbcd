"""Array core of location embeddings: chunk alignment, block kernel, lazy dask glue."""

from __future__ import annotations

import numpy as np
import pytest

from xsky import geo
from xsky.engine.location import build_location_embedding, embed_block, output_chunks
from xsky.models import LocationRef
from xsky.models.satclip import LocationEncoder
from xsky.runtime import cache
from xsky.testing import raise_if_dask_computes


def _wkt(crs: str) -> str:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_wkt()


@pytest.fixture
def tiny_ref():
    """A small in-memory encoder registered in the runtime cache, and its reference."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    enc = LocationEncoder(legendre_polys=3, capacity=8, embed_dim=5).eval()
    digest = cache.put_location_encoder(enc, snapshot=True)
    ref = LocationRef(digest, None, False, "tiny-location", 3, 5)
    return ref, enc


def _utm_axes(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    return 5_340_000 - 5 - 10.0 * np.arange(ny), 600_005 + 10.0 * np.arange(nx)


@pytest.mark.parametrize(
    ("n_in", "in_chunks", "stride", "default", "expected"),
    [
        (60, (25, 25, 10), 4, 1024, (7, 6, 2)),  # cells starting inside each input chunk
        (70, (30, 30, 10), 4, 1024, (8, 7, 3)),
        (10, (3, 3, 4), 5, 1024, (1, 1)),  # an input chunk holding no cell start is merged
        (70, None, 2, 7, (7, 7, 7, 7, 7)),
        (5, None, 1, 1024, (5,)),
    ],
)
def test_output_chunks_align_with_input_chunks(n_in, in_chunks, stride, default, expected):
    got = output_chunks(n_in, in_chunks, stride, default)
    assert got == expected
    assert sum(got) == -(-n_in // stride)


def test_embed_block_equals_the_encoder_at_transformed_centres(tiny_ref):
    ref, enc = tiny_ref
    y, x = _utm_axes(3, 4)
    wkt = _wkt("EPSG:32633")
    out = embed_block(y, x, ref=ref, crs_wkt=wkt, out_dtype=np.dtype("float32"))
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    lon, lat = geo.pixel_lonlat(x, y, "EPSG:32633")
    want = enc.encode(lon.ravel(), lat.ravel()).reshape(3, 4, 5)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_embed_block_is_nan_outside_the_projection_domain(tiny_ref):
    ref, _ = tiny_ref
    # an orthographic view of one hemisphere: the corners of this grid are off the globe
    wkt = _wkt("+proj=ortho +lat_0=0 +lon_0=0 +datum=WGS84")
    x = np.array([-9e6, 0.0, 9e6])
    y = np.array([9e6, 0.0, -9e6])
    with np.errstate(all="raise"):  # no warnings from encoding non-finite points
        out = embed_block(y, x, ref=ref, crs_wkt=wkt, out_dtype=np.dtype("float64"))
    lon, lat = geo.pixel_lonlat(x, y, wkt)
    off = ~(np.isfinite(lon) & np.isfinite(lat))
    assert off[0, 0] and not off[1, 1]  # the test grid does reach outside the domain
    assert np.isnan(out[off]).all()
    assert np.isfinite(out[~off]).all()


def test_graph_build_computes_nothing_and_loads_no_encoder(shared):
    ckpt = shared / "conformance" / "satclip" / "satclip_public_L10.ckpt"
    _, digest = cache.load_location_encoder(ckpt)
    ref = LocationRef(digest, str(ckpt.resolve()), False, "satclip-location-l10", 10, 32)
    cache.clear_cache()
    y, x = _utm_axes(20, 30)
    with raise_if_dask_computes():
        arr = build_location_embedding(y, x, (8, 12), (10, 10, 10), ref=ref,
                                       crs_wkt=_wkt("EPSG:32633"), dtype=np.dtype("float32"))
    assert cache.BUILDS == {}  # the encoder is read inside the first task, not here
    assert arr.shape == (20, 30, 32) and arr.dtype == np.float32
    assert arr.chunks == ((8, 12), (10, 10, 10), (32,))
    got = arr.compute(scheduler="sync")
    assert list(cache.BUILDS.values()) == [1]  # 6 blocks, one read
    lon, lat = geo.pixel_lonlat(x, y, "EPSG:32633")
    want = cache.get_location_encoder(ref).encode(lon.ravel(), lat.ravel())
    np.testing.assert_allclose(got.reshape(-1, 32), want, rtol=1e-6, atol=1e-6)


def test_the_lonlat_transformer_is_built_once_per_crs(tiny_ref):
    ref, _ = tiny_ref
    y, x = _utm_axes(20, 30)
    geo._transformer.cache_clear()
    for crs in ("EPSG:32633", "EPSG:32633", "EPSG:3035"):
        arr = build_location_embedding(y, x, (5, 5, 5, 5), (10, 10, 10), ref=ref,
                                       crs_wkt=_wkt(crs), dtype=np.dtype("float64"))
        arr.compute(scheduler="sync")  # 12 blocks each, one thread
    info = geo._transformer.cache_info()
    assert info.misses == 2  # one build per CRS, not per block or per graph
    assert info.hits == 3 * 12 - 2
