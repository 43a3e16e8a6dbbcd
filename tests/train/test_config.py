"""TOML run configs, `xsky train`, and the export the default model loads."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from xsky.cli import main
from xsky.exceptions import ArgumentError
from xsky.models import create_model
from xsky.train.config import check_config, cube_region_ids, load_config, train_from_config

TOML = textwrap.dedent("""
    [data]
    source = "tutorial:romania"
    chunks = {{}}
    load = true
    isel = {{ x = [0, 24], y = [0, 24] }}
    sel = {{ time = ["2016-06-01", "2016-09-30"] }}

    [model]
    name = "skysense-tiny"
    options = {{ modalities = ["s2"], s2_bands = ["B02", "B03", "B04", "B08"], window = 8 }}

    [sampler]
    window = 8
    batch_size = 4
    max_dates = 3
    n_shards = 2
    min_valid = 0.3

    [[objectives]]
    kind = "mgc"
    options = {{ out_dim = 32, hidden_dim = 32, bottleneck_dim = 16, n_objects = 2 }}

    [[objectives]]
    kind = "proto"
    weight = 0.5
    options = {{ n_prototypes = 4, level = "pixel" }}

    [fit]
    steps = 2
    warmup_steps = 1
    device = "cpu"

    [output]
    checkpoint_dir = "{out}/run"
    export = "{out}/run/model.safetensors"
""")



def test_a_config_trains_exports_and_the_default_architecture_loads_the_export(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML.format(out=tmp_path))
    h = train_from_config(cfg, progress=False)
    assert [r["step"] for r in h.records] == [1, 2]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.warns(UserWarning, match="no position_offsets"):
        model = create_model("default", tmp_path / "run" / "model.safetensors")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "model.safetensors")
    assert set(model.state_dict()) - set(saved) == {"position_offsets"}
    for k, v in saved.items():
        assert torch.equal(model.state_dict()[k], v), k  # the teacher, loaded exactly
    assert float(model.position_offsets.abs().max()) == 0.0
    # the prototype table covers the one region the cube touches, not the whole globe
    from xsky.train.checkpoint import latest_checkpoint, load_checkpoint

    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    table = [v for k, v in tensors.items() if k.startswith("objectives.1.") and v.ndim == 3]
    assert table and all(t.shape[0] == 1 for t in table)
    # a rerun resumes at the end and trains nothing more
    again = train_from_config(cfg, progress=False)
    assert again.resumed_from == 2 and again.records == h.records


def test_the_cli_trains_from_a_config_and_reports_the_checkpoint(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML.format(out=tmp_path))
    assert main(["train", str(cfg), "--steps", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trained to step 1" in out and "step-00000001" in out
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["step"] == 1 and np.isfinite(rec["loss"])


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: t.replace("[fit]", "[fitt]"), "unknown key"),
    (lambda t: t.replace('kind = "mgc"', 'kind = "moco"'), "kind must be one of"),
    (lambda t: t.replace('name = "skysense-tiny"', 'nam = "skysense-tiny"'), r"\[model\]"),
    (lambda t: t.replace('source = "tutorial:romania"', ""), "needs source"),
    (lambda t: t.replace("steps = 2", "steps = 2\nresume = false"), "cannot set 'resume'"),
    (lambda t: t + "\n[data\n", "not valid TOML"),
])
def test_bad_configs_are_refused_with_the_section_named(tmp_path, edit, match):
    cfg = tmp_path / "run.toml"
    cfg.write_text(edit(TOML.format(out=tmp_path)))
    with pytest.raises(ArgumentError, match=match):
        load_config(cfg)
    assert main(["train", str(cfg), "--no-progress"]) == 2


def test_config_paths_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "sub" / "run.toml"
    cfg.parent.mkdir()
    cfg.write_text(TOML.format(out="outdir"))
    loaded = load_config(cfg)
    assert loaded["output"]["checkpoint_dir"] == str(tmp_path / "outdir" / "run")
    assert loaded["data"]["source"] == "tutorial:romania"
    with pytest.raises(ArgumentError, match="at least one"):
        check_config({"data": {"source": "x"}, "model": {"name": "m"}})


def test_the_romania_cube_lies_in_one_geo_context_region():
    import xsky
    from xsky.train.objectives import SKYSENSE_REGIONS

    ds = xsky.tutorial.open_dataset("romania")
    ids = cube_region_ids(ds, SKYSENSE_REGIONS)
    # lon 22.15 E, lat 45.20 N: column floor((22.15 + 180) / 5.625) = 35, row
    # floor((45.2 + 90) / 2.8125) = 48 of the 64 x 64 grid
    assert ids == [48 * 64 + 35]
