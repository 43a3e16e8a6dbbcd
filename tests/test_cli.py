"""The ``xsky`` command line: ``xsky models`` and ``xsky embed`` (offline fixtures)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import xarray as xr

import xsky
from xsky.cli import main
from xsky.io.stac import load_stac
from xsky.testing import stac as fx

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning"),
]

BBOX = ("22.147", "45.201", "22.157", "45.208")


@pytest.fixture(scope="module")
def items_file(tmp_path_factory, shared):
    d = tmp_path_factory.mktemp("cli_items")
    items = fx.romania_s2_items(d / "cogs", shared / "data", start=40, n_dates=6)
    return fx.write_item_collection(items, d / "search.geojson")


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == xsky.models.list_models()
    assert main(["models", "test-*", "-v"]) == 0
    line, *card = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("test-tiny\twindow 16, stride 4, 16 features (dense, per date)")
    assert line.endswith("s2: B02,B03,B04,B08")
    assert card == ["    licence: Apache-2.0"]


def test_models_without_match_fails_with_exit_2(capsys):
    assert main(["models", "no-such-*"]) == 2
    assert "no registered model matches 'no-such-*'" in capsys.readouterr().err


def test_embed_items_file_matches_the_python_api(items_file, tmp_path, capsys):
    out = tmp_path / "emb.zarr"
    argv = ["embed", "--items", str(items_file), "--bbox", *BBOX, "--time",
            "2018-01-01/2018-02-28", "--model", "test-tiny", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert re.search(r"100%\|.*\| 3/3 ", captured.err)  # the progress bar ran to the end
    stored = xr.open_zarr(out, consolidated=False, decode_coords="all")["embedding"].load()
    cube = load_stac(items_file, bands=["B02", "B03", "B04", "B08"],
                     bbox=tuple(map(float, BBOX)), time="2018-01-01/2018-02-28")
    want = xsky.embed(cube, "test-tiny").compute()
    assert stored.dims == ("time", "y", "x", "feature")
    assert stored.sizes["time"] == 3  # 2018-01-07, 02-06, 02-16
    np.testing.assert_allclose(stored.values, want.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stored.valid_fraction.values, want.valid_fraction.values)
    assert stored.rio.crs.to_epsg() == 3035
    assert np.isfinite(stored.values).mean() > 0.2


def test_embed_sample_writes_store_and_preview(tmp_path, capsys):
    out, png = tmp_path / "s.zarr", tmp_path / "s.png"
    argv = ["embed", "--sample", "romania", "--time", "2020-06-01/2020-07-31", "--bbox",
            *BBOX, "--model", "test-tiny", "--out", str(out), "--preview", str(png),
            "--no-progress"]
    assert main(argv) == 0
    assert "Completed" not in capsys.readouterr().err
    stored = xr.open_zarr(out, consolidated=False, decode_coords="all")["embedding"]
    cube = xsky.tutorial.open_dataset("romania").sel(time=slice("2020-06-01", "2020-07-31"))
    assert stored.sizes["time"] == cube.sizes["time"] > 0
    assert stored.sizes["feature"] == 16
    assert stored.sizes["x"] < 25 and stored.sizes["y"] < 25  # cropped (full cube: 25 x 25)
    # the values are the Python API's on the same crop
    from xsky.cli import _crop_sample

    crop = _crop_sample(xsky.tutorial.open_dataset("romania"), tuple(map(float, BBOX)),
                        "2020-06-01/2020-07-31")
    want = xsky.embed(crop, "test-tiny").compute()
    np.testing.assert_array_equal(stored.x.values, want.x.values)
    np.testing.assert_array_equal(stored.time.values, want.time.values)
    np.testing.assert_allclose(stored.values, want.values, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(stored.valid_fraction.values, want.valid_fraction.values)
    assert stored.attrs["model"] == "test-tiny"
    # the preview is an image of the embedding (a real PNG, RGB, one pixel per output pixel)
    import matplotlib.image as mpimg

    assert png.read_bytes()[:4] == b"\x89PNG"
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.01  # not a blank image
    # and it is the preview of these values: the same picture drawn from the API's result
    from xsky.plot import save_preview

    expected = mpimg.imread(save_preview(want, tmp_path / "want.png"))
    assert img.shape == expected.shape
    assert img.shape[0] % stored.sizes["y"] == 0 and img.shape[1] % stored.sizes["x"] == 0
    np.testing.assert_allclose(img, expected, atol=2 / 255)  # 8-bit colours, 1e-6 inputs


def test_embed_refuses_to_overwrite_and_reports_bad_input(items_file, tmp_path, capsys):
    # exit status convention: 2 = usage error (ArgumentError), 1 = data error (DataError ...)
    out = tmp_path / "exists.zarr"
    out.mkdir()
    base = ["embed", "--items", str(items_file), "--model", "test-tiny"]
    assert main([*base, "--out", str(out)]) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "a.zarr"), "--bbox", "1", "2", "3"]) == 2
    assert "--bbox must be 4 numbers" in capsys.readouterr().err
    # a bbox outside the items is a data error now (was 2 before the convention)
    assert main([*base, "--out", str(tmp_path / "b.zarr"), "--bbox", "10,50,10.1,50.1"]) == 1
    assert "does not overlap any of the 6 items" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c.zarr"), "--modality", "s1"]) == 2
    assert "takes modalities ['s2'], not --modality 's1'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --items or --sample is required
        main(["embed", "--model", "test-tiny", "--out", str(tmp_path / "d.zarr")])


SAMPLE = ["embed", "--sample", "romania", "--model", "test-tiny", "--time",
          "2020-06-01/2020-06-30", "--no-progress"]


@pytest.mark.parametrize(("chunks", "match"), [
    ("x=0", r"--chunks sizes must be positive.*'x': 0"),
    ("band=4", r"--chunks names dimension\(s\) \['band'\]; use 'time', 'x', 'y'"),
    ("x=ten", r"--chunks must be an int or 'x=512,y=512,time=1'"),
])
def test_embed_bad_chunks_is_a_usage_error_in_one_line(tmp_path, capsys, chunks, match):
    out = tmp_path / "o.zarr"
    assert main([*SAMPLE, "--out", str(out), "--chunks", chunks]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(match, err)
    assert not out.exists()


def test_debug_flag_prints_the_traceback(tmp_path, capsys):
    assert main([*SAMPLE, "--out", str(tmp_path / "o.zarr"), "--chunks", "x=0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ArgumentError" in err
    assert main(["--debug", "models", "no-such-*"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_data_error_exits_1_with_one_line(tmp_path, capsys):
    # --time outside the sample: the values are well-formed, the data does not have them
    argv = ["embed", "--sample", "romania", "--model", "test-tiny", "--time",
            "1990-01-01/1990-02-01", "--out", str(tmp_path / "o.zarr")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no date of the sample falls in --time '1990-01-01/1990-02-01'" in err
    assert not (tmp_path / "o.zarr").exists()


def test_overwrite_never_deletes_a_directory_xsky_did_not_write(tmp_path, capsys):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main([*SAMPLE, "--out", str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "xsky did not write" in err and "remove it yourself or choose another path" in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    plain = tmp_path / "notes.txt"
    plain.write_text("keep")
    assert main([*SAMPLE, "--out", str(plain), "--overwrite"]) == 2
    assert "existing file that xsky did not write" in capsys.readouterr().err
    assert plain.read_text() == "keep"


def test_overwrite_replaces_an_xsky_store_and_a_failed_write_keeps_it(tmp_path, capsys,
                                                                      monkeypatch):
    from xsky.io.store import is_xsky_store

    out = tmp_path / "emb.zarr"
    assert main([*SAMPLE, "--out", str(out)]) == 0
    assert is_xsky_store(out)
    first = xr.open_zarr(out, consolidated=False)["embedding"].load()
    # a second run overwrites it (it is xsky's) ...
    argv = ["embed", "--sample", "romania", "--model", "test-tiny", "--time",
            "2020-07-01/2020-07-31", "--no-progress", "--out", str(out), "--overwrite"]
    assert main(argv) == 0
    second = xr.open_zarr(out, consolidated=False)["embedding"].load()
    assert not np.array_equal(second.time.values, first.time.values)
    # ... and a write that fails half-way leaves the previous result intact
    import dask

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(dask, "compute", boom)
    assert main(argv) == 1
    assert "disk full" in capsys.readouterr().err
    kept = xr.open_zarr(out, consolidated=False)["embedding"].load()
    xr.testing.assert_identical(kept, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.zarr"]  # no temporary left


def test_unwritable_preview_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import xsky.api

    called = []
    monkeypatch.setattr(xsky.api, "embed", lambda *a, **k: called.append(1))
    out = tmp_path / "o.zarr"
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for png, match in [(blocker / "p.png", "cannot be written"),
                       (tmp_path, "is a directory; give a .png file path"),
                       (tmp_path / "p.jpg", "must be a .png file path")]:
        assert main([*SAMPLE, "--out", str(out), "--preview", str(png)]) == 2
        assert match in capsys.readouterr().err
    assert not called and not out.exists()
    # a preview folder that does not exist yet is created (out/ in out/emb.png)
    assert main([*SAMPLE, "--out", str(out), "--preview", str(tmp_path / "new" / "p.png")]) == 1
    assert (tmp_path / "new").is_dir() and called == [1]


def test_console_script_is_declared_and_runs():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "xsky"]
    assert ep.value == "xsky.cli:main"
    res = subprocess.run([sys.executable, "-m", "xsky.cli", "models", "test-*"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert res.stdout.split() == ["test-tiny"]


def test_embed_resume_continues_an_interrupted_store(tmp_path, capsys, monkeypatch):
    from xsky.io import zarr_regions

    out = tmp_path / "emb.zarr"
    argv = [*SAMPLE, "--out", str(out), "--chunks", "x=32,y=32,time=1"]
    orig = zarr_regions.write_region

    def lost(target, index, *blocks):
        if index in (9, 13):  # the first 8 (one compute) are written
            raise OSError("disk full")
        return orig(target, index, *blocks)

    monkeypatch.setattr(zarr_regions, "write_region", lost)
    assert main(argv) == 1  # a new store is written in place, so it can be resumed
    err = capsys.readouterr().err
    assert "disk full" in err and "--resume" in err
    monkeypatch.undo()
    n_done = int(zarr_regions.CompletionRecord.open(out).done().sum())
    assert 8 <= n_done < 18
    # without --resume the incomplete store is refused, with a pointer to --resume
    assert main(argv) == 2
    assert "is incomplete (an interrupted run); pass --resume" in capsys.readouterr().err
    # other options: refused, naming what differs
    other = [*argv, "--resume", "--edge", "pad"]
    assert main(other) == 2
    assert "'edge' is 'reflect' there but 'pad' now" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{18 - n_done} region(s) computed, {n_done} already complete, of 18" in err
    from xsky.api.writing import open_embedding

    stored = open_embedding(out).compute()
    cube = xsky.tutorial.open_dataset("romania").sel(time=slice("2020-06-01", "2020-06-30"))
    want = xsky.embed(cube.chunk({"x": 32, "y": 32, "time": 1}), "test-tiny").compute()
    np.testing.assert_array_equal(stored.values, want.values)
    np.testing.assert_array_equal(stored.valid_fraction.values, want.valid_fraction.values)
    # a complete store: --resume computes nothing
    assert main([*argv, "--resume"]) == 0
    assert "0 region(s) computed, 18 already complete" in capsys.readouterr().err


def test_embed_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "emb.zarr"
    args = ["embed", "--sample", "romania", "--model", "test-tiny", "--time",
            "2019-01-01/2019-02-28", "--out", str(out), "--dry-run"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert not out.exists() and not list(tmp_path.iterdir())
    assert "test-tiny" in printed and "1.00 km²" in printed  # the 100 x 100 px sample at 10 m
    windows = int(re.search(r"windows\s+([\d,]+)", printed).group(1).replace(",", ""))
    emb = xsky.embed(xsky.tutorial.open_dataset("romania").sel(time=slice("2019-01-01",
                                                                          "2019-02-28")),
                     "test-tiny")
    assert windows == emb.sizes["time"] * 7 * 7  # 16 px windows: 7 per axis
    assert re.search(r"estimate here\s+\d", printed)
