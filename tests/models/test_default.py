"""The shipped default encoder: pinned packaged weights, the patch-position correction, and
clear errors for wrong weight files."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

import xsky
from xsky.exceptions import ArgumentError, CheckpointError
from xsky.models import create_model, get_model_card
from xsky.models.default import BANDS, WEIGHTS_SHA256, DefaultSkySense, weights_path


def test_default_and_its_name_build_the_same_pinned_model():
    a, b = create_model("default"), create_model("xsky-s2-tiny")
    assert isinstance(a, DefaultSkySense) and a.spec.bands == BANDS
    assert a.spec.name == "default" and b.spec.name == "xsky-s2-tiny"
    assert a.weights_sha256 == b.weights_sha256
    assert hashlib.sha256(weights_path().read_bytes()).hexdigest() == WEIGHTS_SHA256
    card = get_model_card("default")
    assert card.weights[0].sha256 == WEIGHTS_SHA256 and "EUPL-1.2" in card.license
    # the offsets are real: mean zero over positions, far from zero per position
    off = a.position_offsets
    assert off.shape == (a.spec.feature_dim, 4, 4)
    assert float(off.mean((1, 2)).abs().max()) < 1e-4 < float(off.abs().max())


def _position_share(emb: np.ndarray) -> float:
    """Share of the embedding's variance explained by the pixel's position in its patch."""
    v = emb.reshape(-1, emb.shape[-1])
    pos = ((np.arange(emb.shape[0]) % 4)[:, None] * 4 + np.arange(emb.shape[1]) % 4).ravel()
    means = np.stack([np.nanmean(v[pos == i], 0) for i in range(16)])
    return float(np.var(means, 0).sum() / np.nanvar(v, 0).sum())


def test_the_patch_position_term_is_removed_on_held_out_dates():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cube = xsky.tutorial.open_dataset("romania")
    series = cube[[*BANDS, "valid"]].sel(time=slice("2020-06-01", "2020-08-31"))
    series = series.isel(x=slice(60, 100), y=slice(0, 40)).load()  # held out from pretraining
    model = create_model("default")
    fixed = xsky.embed(series, model).transpose("y", "x", "feature").values
    model.position_offsets.zero_()
    raw = xsky.embed(series, model).transpose("y", "x", "feature").values
    assert _position_share(raw) > 0.8  # what the UPHead leaves after pretraining
    assert _position_share(fixed) < 0.3


def test_other_weight_files_load_and_wrong_ones_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(weights_path())
    state["position_offsets"] = torch.zeros_like(state["position_offsets"])
    mine = tmp_path / "mine.safetensors"
    save_file(state, mine)
    m = create_model("default", mine)
    assert float(m.position_offsets.abs().max()) == 0.0
    del state["fusion.porj_linear.weight"]
    bad = tmp_path / "bad.safetensors"
    save_file(state, bad)
    with pytest.raises(CheckpointError, match=r"fusion\.porj_linear\.weight"):
        create_model("default", bad)
    with pytest.raises(ArgumentError, match="takes no option"):
        create_model("default", modalities=("s1",))
