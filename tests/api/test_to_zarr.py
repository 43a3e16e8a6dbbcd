"""``xsky.to_zarr`` / ``xsky.open_embedding``: region-wise, resumable result stores."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

import xsky
from xsky.api.writing import IncompleteStoreWarning, WriteReport, open_embedding, to_zarr
from xsky.exceptions import ArgumentError, DataError
from xsky.io import zarr_regions
from xsky.io.store import is_xsky_store
from xsky.io.zarr_regions import (
    CompletionRecord,
    diff_fingerprints,
    input_identity,
    plan_regions,
    store_state,
    zarr_chunk,
)
from xsky.testing import raise_if_dask_computes

SOURCE = {"sample": "romania", "dates": 2}

pytestmark = pytest.mark.filterwarnings(  # stores the tests write with xarray itself
    "ignore:Consolidated metadata is currently not part:UserWarning")


def _cube(chunks=32, t=2):
    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, t))
    return cube.chunk({"time": 1, "x": chunks, "y": chunks})


@pytest.fixture(scope="module")
def emb():
    return xsky.embed(_cube(), "test-tiny")


@pytest.fixture(scope="module")
def reference(emb):
    # what is stored: the embedding with the output conventions' grid mapping (GeoTransform)
    from xsky.io.conventions import store_dataset

    return store_dataset(emb)["embedding"].compute()


def _raw(path, name="embedding"):
    return np.asarray(zarr.open_array(str(path), path=name, mode="r")[...])


class _Fail:
    """write_region that fails for the given regions (an interruption in the middle)."""

    def __init__(self, bad):
        self.bad, self.orig = set(bad), zarr_regions.write_region

    def __call__(self, target, index, *blocks):
        if index in self.bad:
            raise RuntimeError(f"lost region {index}")
        return self.orig(target, index, *blocks)


# -- the region plan ----------------------------------------------------------------------


def test_zarr_chunk_puts_a_chunk_edge_at_every_dask_edge():
    assert zarr_chunk((8, 8, 9)) == 8  # the engine's merged last chunk
    assert zarr_chunk((512, 512, 100)) == 512
    assert zarr_chunk((25,)) == 25
    assert zarr_chunk((6, 4, 4)) is None  # gcd 2 is too small: rechunk instead
    assert zarr_chunk((9, 8, 8)) is None  # a flipped axis: the remainder first


def test_regions_follow_dask_blocks_and_never_share_a_chunk(emb):
    plan = plan_regions(emb.sizes, emb.chunksizes, ["time", "y", "x"])
    assert plan.chunks == (1, 8, 8)
    assert plan.bounds == ((0, 1, 2), (0, 8, 16, 25), (0, 8, 16, 25))
    assert plan.n_regions == 18 and plan.grid == (2, 3, 3)
    owner = np.full((2, 4, 4), -1)  # Zarr chunk -> the region that writes it
    for i in range(plan.n_regions):
        sl = plan.slices(i)
        for d, c in zip(plan.dims, plan.chunks, strict=True):
            assert sl[d].start % c == 0  # starts on a chunk edge
        cells = owner[sl["time"], sl["y"].start // 8: -(-sl["y"].stop // 8),
                      sl["x"].start // 8: -(-sl["x"].stop // 8)]
        assert (cells == -1).all()
        cells[...] = i
    assert (owner >= 0).all()  # every chunk belongs to exactly one region
    grouped = plan_regions(emb.sizes, emb.chunksizes, ["time", "y", "x"], {"y": 2, "x": 3})
    assert grouped.bounds[1:] == ((0, 16, 25), (0, 25))
    with pytest.raises(ArgumentError, match=r"region_chunks names dimension\(s\) \['band'\]"):
        plan_regions(emb.sizes, emb.chunksizes, ["y", "x"], {"band": 2})


# -- writing and resuming -----------------------------------------------------------------


def test_a_store_round_trips_identically_and_is_marked_complete(emb, reference, tmp_path):
    out = tmp_path / "e.zarr"
    rep = to_zarr(emb, out, progress=False, source=SOURCE)
    assert isinstance(rep, WriteReport)
    assert (rep.regions, rep.computed, rep.skipped, rep.complete) == (18, 18, 0, True)
    # 25 x 25 output pixels of 40 m, 2 dates: 1 km² of footprint
    assert rep.area_km2 == pytest.approx(25 * 25 * 40 * 40 / 1e6)
    assert is_xsky_store(out) and store_state(out).kind == "complete"
    back = open_embedding(out)
    assert isinstance(back.data, dask.array.Array)  # lazy
    xr.testing.assert_identical(back.compute(), reference)
    # a plain xarray reader opens it too (consolidated, no warning about the record group)
    plain = xr.open_zarr(out, decode_coords="all")["embedding"]
    np.testing.assert_array_equal(plain.values, reference.values)


def test_an_interrupted_run_resumes_with_only_the_missing_regions(emb, reference, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "e.zarr"
    monkeypatch.setattr(zarr_regions, "write_region", _Fail({4, 11, 17}))
    with pytest.raises(RuntimeError, match="lost region"):
        to_zarr(emb, out, progress=False, source=SOURCE, max_in_flight=3)
    monkeypatch.undo()
    state = store_state(out)
    assert state.kind == "incomplete"
    done = state.record.done()
    missing = set(np.flatnonzero(~done).tolist())
    assert {4, 11, 17} <= missing  # the failed ones, and whatever the error cut short
    rep = to_zarr(emb, out, progress=False, source=SOURCE)
    assert rep.computed == len(missing) and rep.skipped == 18 - len(missing)
    assert rep.complete
    xr.testing.assert_identical(open_embedding(out).compute(), reference)
    # a complete store of the same computation is left as it is: nothing is computed
    with raise_if_dask_computes():
        again = to_zarr(emb, out, progress=False, source=SOURCE)
    assert (again.computed, again.skipped) == (0, 18)


def test_a_region_is_recorded_only_after_all_its_chunks(emb, reference, tmp_path, monkeypatch):
    # the last variable of region 5 fails after the first was written: the region must not
    # read as valid anywhere, not even in the variable whose chunk is on disk
    from xsky.api.writing import _Job

    first, last = _Job.build(emb, None, SOURCE).lazy
    out = tmp_path / "e.zarr"
    orig_encoded, orig_write = zarr_regions._encoded, zarr_regions.write_region
    current = []

    def encoded(var, name):
        if name == last and current[-1] == 5:
            raise OSError("disk full")
        return orig_encoded(var, name)

    def write(target, index, *blocks):
        current.append(index)
        return orig_write(target, index, *blocks)

    monkeypatch.setattr(zarr_regions, "_encoded", encoded)
    monkeypatch.setattr(zarr_regions, "write_region", write)
    with pytest.raises(OSError, match="disk full"), dask.config.set(scheduler="sync"):
        to_zarr(emb, out, progress=False, source=SOURCE)
    monkeypatch.undo()
    rec = CompletionRecord.open(out)
    assert not rec.done()[5]
    assert rec.done().sum() == current.index(5)  # those written before it are recorded
    sl = rec.plan.slices(5)
    box = (sl["time"], sl["y"], sl["x"])
    want = {"embedding": reference.values, "valid_fraction": reference.valid_fraction.values}
    np.testing.assert_array_equal(_raw(out, first)[box], want[first][box])  # on disk ...
    assert np.isnan(_raw(out, last)[box]).all()
    with pytest.warns(IncompleteStoreWarning):
        part = open_embedding(out).compute()
    # ... yet masked: a region counts only once it is recorded
    assert np.isnan(part.values[box]).all()
    assert np.isnan(part.valid_fraction.values[box]).all()
    for i in np.flatnonzero(rec.done()):
        s = rec.plan.slices(int(i))
        b = (s["time"], s["y"], s["x"])
        np.testing.assert_array_equal(part.values[b], reference.values[b])


def test_open_embedding_warns_or_raises_with_the_missing_fraction(emb, reference, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "e.zarr"
    monkeypatch.setattr(zarr_regions, "write_region", _Fail(set(range(9, 18))))
    with pytest.raises(RuntimeError):  # the first 9 regions are one compute, they succeed
        to_zarr(emb, out, progress=False, source=SOURCE, max_in_flight=9)
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"incomplete: 9 of 18 regions \(50\.0%\) are missing"):
        open_embedding(out, incomplete="raise")
    with pytest.warns(IncompleteStoreWarning, match=r"9 of 18 regions \(50\.0%\)"), \
            raise_if_dask_computes():
        part = open_embedding(out)  # lazy: nothing computed to open it
    part = part.compute()
    # regions 0..8 are the first date (C order over time, y, x): complete; date 2 missing
    np.testing.assert_array_equal(part.values[0], reference.values[0])
    assert np.isnan(part.values[1]).all() and np.isnan(part.valid_fraction.values[1]).all()
    with pytest.raises(ArgumentError, match="incomplete must be 'warn' or 'raise'"):
        open_embedding(out, incomplete="ignore")
    with pytest.raises(ArgumentError, match="no store at"):
        open_embedding(tmp_path / "none.zarr")


def test_a_changed_computation_is_refused_naming_the_field(emb, tmp_path, monkeypatch):
    out = tmp_path / "e.zarr"
    monkeypatch.setattr(zarr_regions, "write_region", _Fail({0}))
    with pytest.raises(RuntimeError), dask.config.set(scheduler="sync"):
        to_zarr(emb, out, progress=False, source=SOURCE)
    monkeypatch.undo()
    padded = xsky.embed(_cube(), "test-tiny", edge="pad")
    with pytest.raises(ArgumentError, match=r"'edge' is 'reflect' there but 'pad' now"):
        to_zarr(padded, out, progress=False, source=SOURCE)
    with pytest.raises(ArgumentError, match=r"'input.dates' is 2 there but 3 now"):
        to_zarr(emb, out, progress=False, source={**SOURCE, "dates": 3})
    rechunked = xsky.embed(_cube(chunks=48), "test-tiny")
    with pytest.raises(ArgumentError, match=r"'chunks.x' is 8 there but 12 now"):
        to_zarr(rechunked, out, progress=False, source=SOURCE)
    later = xsky.embed(xsky.tutorial.open_dataset("romania").isel(time=slice(1, 3))
                       .chunk({"time": 1, "x": 32, "y": 32}), "test-tiny")
    with pytest.raises(ArgumentError, match=r"'coords.time' is '\w+' there but '\w+' now"):
        to_zarr(later, out, progress=False, source=SOURCE)
    assert store_state(out).kind == "incomplete"  # refusals touched nothing
    # overwrite=True starts over with the new computation
    rep = to_zarr(padded, out, progress=False, source=SOURCE, overwrite=True)
    assert (rep.computed, rep.skipped, rep.complete) == (18, 0, True)
    assert open_embedding(out).attrs["edge"] == "pad"


def test_every_option_recorded_by_embed_is_in_the_fingerprint(emb):
    from xsky.api.writing import _Job

    fp = _Job.build(emb, None, SOURCE).fingerprint
    for key in ("model", "weights_sha256", "model_options", "xsky_version", "window",
                "stride", "overlap", "edge", "normalization", "input_units", "precision",
                "input", "crs", "bbox", "time", "coords", "chunks", "regions", "variables"):
        assert key in fp, key
    assert fp["time"] == {"n": 2, "first": "2015-08-01T00:00:00.000000000",
                          "last": "2015-08-31T00:00:00.000000000"}
    bf16 = _Job.build(emb.assign_attrs(precision="bfloat16"), None, SOURCE).fingerprint
    assert [d[0] for d in diff_fingerprints(fp, bf16)] == ["precision"]
    int8 = emb.copy()
    int8.encoding = {"dtype": "int8", "scale_factor": 0.01}
    q = _Job.build(int8, None, SOURCE).fingerprint
    assert {d[0] for d in diff_fingerprints(fp, q)} == {"variables.embedding"}
    # an explicit identity of the input carried by the embedding counts as well
    ident = emb.assign_attrs(input_identity='{"files": ["a.nc"]}')
    assert "input_identity" in [d[0] for d in diff_fingerprints(
        fp, _Job.build(ident, None, SOURCE).fingerprint)]


def test_input_identity_names_the_source_files(tmp_path):
    ident = input_identity(xsky.tutorial.open_dataset("romania"))
    (f,) = ident["files"]
    assert f["name"] == "romania_s2_10m.nc" and f["size"] > 0 and "mtime_ns" in f
    copy = tmp_path / "romania_s2_10m.nc"
    shutil.copy(f["path"], copy)
    other = input_identity(xr.open_dataset(copy))
    assert other["files"][0]["path"] != f["path"]
    assert input_identity(xr.Dataset({"a": ("x", np.zeros(3))})) is None
    ids = xr.Dataset(attrs={"stac_items": ["S2B_1", "S2A_2"]})
    assert input_identity(ids) == {"stac_items": ["S2A_2", "S2B_1"]}


def test_unknown_input_identity_is_logged(tmp_path, caplog):
    from xsky.testing import synthetic_s2_cube

    # made in memory: no source file, no STAC items
    emb = xsky.embed(synthetic_s2_cube(32, 32, 1).chunk(y=16, x=16), "test-tiny")
    assert "input_identity" not in emb.attrs
    with caplog.at_level(logging.WARNING, logger="xsky"):
        to_zarr(emb, tmp_path / "e.zarr", progress=False)
    assert "the input's identity is not known" in caplog.text


# -- overwrite rules (never delete what xsky did not write) ------------------------------


def test_stores_xsky_did_not_write_are_never_replaced(emb, tmp_path):
    mine = tmp_path / "results.zarr"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for resume in (True, False):
        with pytest.raises(ArgumentError, match="xsky did not write"):
            to_zarr(emb, mine, progress=False, source=SOURCE, overwrite=True, resume=resume)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    foreign = tmp_path / "plain.zarr"
    xr.Dataset({"a": ("x", np.zeros(3))}).to_zarr(foreign)
    with pytest.raises(ArgumentError, match="xsky did not write"):
        to_zarr(emb, foreign, progress=False, source=SOURCE, overwrite=True)


def test_resume_false_writes_beside_and_keeps_the_previous_store_on_failure(
        emb, reference, tmp_path, monkeypatch):
    out = tmp_path / "e.zarr"
    to_zarr(emb, out, progress=False, source=SOURCE, resume=False)
    with pytest.raises(ArgumentError, match="exists; pass overwrite=True"):
        to_zarr(emb, out, progress=False, source=SOURCE, resume=False)
    padded = xsky.embed(_cube(), "test-tiny", edge="pad")
    monkeypatch.setattr(zarr_regions, "write_region", _Fail({7}))
    with pytest.raises(RuntimeError):
        to_zarr(padded, out, progress=False, source=SOURCE, resume=False, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.zarr"]  # no temporary left
    xr.testing.assert_identical(open_embedding(out).compute(), reference)
    # a store written in one go (no record) cannot be resumed, only replaced
    plain = tmp_path / "plain.zarr"
    from xsky.io.store import atomic_store

    with atomic_store(plain, overwrite=False) as tmp:
        reference.to_dataset().to_zarr(tmp)
    with pytest.raises(ArgumentError, match="without a completion record"):
        to_zarr(emb, plain, progress=False, source=SOURCE)
    assert to_zarr(emb, plain, progress=False, source=SOURCE, overwrite=True).complete


def test_an_incomplete_store_points_to_resume(emb, tmp_path, monkeypatch):
    out = tmp_path / "e.zarr"
    monkeypatch.setattr(zarr_regions, "write_region", _Fail({3}))
    with pytest.raises(RuntimeError):
        to_zarr(emb, out, progress=False, source=SOURCE)
    monkeypatch.undo()
    with pytest.raises(ArgumentError, match=r"incomplete \(an interrupted run\); pass "
                                            r"resume=True \(--resume\)"):
        to_zarr(emb, out, progress=False, source=SOURCE, resume=False)


def test_an_interrupted_initialisation_is_started_again(emb, reference, tmp_path):
    out = tmp_path / "e.zarr"
    to_zarr(emb, out, progress=False, source=SOURCE)
    shutil.rmtree(out / "_xsky")  # as if killed before the record was written
    zarr.open_group(str(out), mode="r+").attrs["xsky_status"] = "incomplete"
    assert store_state(out).kind == "initialising"
    with pytest.warns(IncompleteStoreWarning, match="100.0%"):
        open_embedding(out)
    rep = to_zarr(emb, out, progress=False, source=SOURCE)
    assert rep.computed == 18
    xr.testing.assert_identical(open_embedding(out).compute(), reference)


# -- laziness, scheduling, chunking -------------------------------------------------------


def test_each_block_is_computed_once_and_planning_computes_nothing(tmp_path, monkeypatch):
    from xsky.api.writing import _Job
    from xsky.engine import graph

    calls = []
    orig = graph.run_block

    def counting(*blocks, task, block_id=None):
        calls.append(block_id)
        return orig(*blocks, task=task, block_id=block_id)

    monkeypatch.setattr(graph, "run_block", counting)
    lazy = xsky.embed(_cube(), "test-tiny")  # the graph calls the counting kernel
    with raise_if_dask_computes():
        _Job.build(lazy, None, SOURCE)  # plan, fingerprint, areas: metadata only
    rep = to_zarr(lazy, tmp_path / "e.zarr", progress=False, source=SOURCE, max_in_flight=4)
    assert rep.computed == 18 and len(calls) == 18  # one model block per region, once


def test_a_computed_result_is_one_region(reference, tmp_path):
    rep = to_zarr(reference, tmp_path / "e.zarr", progress=False, source=SOURCE)
    assert (rep.regions, rep.computed) == (1, 1)
    xr.testing.assert_identical(open_embedding(tmp_path / "e.zarr").compute(), reference)


def test_other_chunkings_give_the_same_values(reference, tmp_path):
    flipped = _cube(chunks=48).isel(y=slice(None, None, -1))  # irregular output chunks
    emb = xsky.embed(flipped, "test-tiny")
    rep = to_zarr(emb, tmp_path / "f.zarr", progress=False, source=SOURCE)
    back = open_embedding(tmp_path / "f.zarr").isel(y=slice(None, None, -1)).compute()
    assert rep.complete
    np.testing.assert_allclose(back.values, reference.values, atol=1e-5)


def test_dataset_input_round_trips(reference, tmp_path):
    ds = reference.to_dataset().assign(extra=reference.isel(feature=0) * 2).chunk(
        {"time": 1, "x": 8, "y": 8})
    rep = to_zarr(ds, tmp_path / "d.zarr", progress=False, source=SOURCE)
    assert rep.regions == 2 * 4 * 4
    back = open_embedding(tmp_path / "d.zarr")
    assert isinstance(back, xr.Dataset)
    np.testing.assert_array_equal(back["extra"].values, ds["extra"].values)


def test_progress_bar_shows_regions_and_km2_per_hour(emb, tmp_path, capsys, caplog,
                                                     monkeypatch):
    to_zarr(emb, tmp_path / "a.zarr", source=SOURCE)
    err = capsys.readouterr().err
    assert re.search(r"100%\|.*\| 18/18 .*km²/h", err)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # without tqdm: log lines
    with caplog.at_level(logging.INFO, logger="xsky"):
        to_zarr(emb, tmp_path / "b.zarr", source=SOURCE)
    assert re.search(r"18/18 regions \(100%\), [\d,]+ km²/h", caplog.text)
    assert "18 region(s) computed, 0 already complete, of 18 (complete" in caplog.text
    assert "km²" not in capsys.readouterr().err


def test_bad_arguments_are_refused_before_any_work(emb, tmp_path):
    with pytest.raises(ArgumentError, match="writes a Zarr store"):
        to_zarr(emb, tmp_path / "e.nc", progress=False)
    with pytest.raises(ArgumentError, match="store must be a path"):
        to_zarr(emb, 3, progress=False)
    with pytest.raises(ArgumentError, match="DataArray or Dataset"):
        to_zarr(emb.values, tmp_path / "e.zarr")
    with pytest.raises(ArgumentError, match="max_in_flight"):
        to_zarr(emb, tmp_path / "e.zarr", max_in_flight=0)
    assert not (tmp_path / "e.zarr").exists()


def test_embed_records_its_input_files_so_a_resume_from_another_file_is_refused(tmp_path):
    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))[
        ["B02", "B03", "B04", "B08", "valid"]]
    paths = []
    for i, scale in enumerate((1.0, 0.5)):  # the same grid and dates, other values
        p = tmp_path / f"cube{i}.nc"
        cube.assign({b: cube[b] * scale for b in ("B02", "B03", "B04", "B08")}).to_netcdf(p)
        paths.append(p)
    opened = [xr.open_dataset(p, chunks={"time": 1}, decode_coords="all") for p in paths]
    first, second = (xsky.embed(ds, "test-tiny") for ds in opened)
    ident = json.loads(first.attrs["input_identity"])
    assert [f["name"] for f in ident["files"]] == ["cube0.nc"]
    out = tmp_path / "e.zarr"
    to_zarr(first, out, progress=False)
    with pytest.raises(ArgumentError,
                       match=r"'input_identity' is .*cube0\.nc.* there but .*cube1\.nc"):
        to_zarr(second, out, progress=False)


@pytest.mark.filterwarnings("error:Failed to open Zarr store with consolidated metadata")
@pytest.mark.parametrize("consolidated", [True, False])
def test_a_store_another_tool_wrote_opens_without_the_consolidated_warning(reference, tmp_path,
                                                                           consolidated):
    path = tmp_path / f"foreign-{consolidated}.zarr"
    reference.to_dataset(name="embedding").to_zarr(path, consolidated=consolidated)
    back = open_embedding(path)  # a store without xsky's record opens as it is
    np.testing.assert_array_equal(back.values, reference.values)
