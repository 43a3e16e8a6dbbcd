"""Atomic checkpoint folders: what is written, listed, pruned and refused."""

from __future__ import annotations

import json

import pytest
import torch

from xsky.exceptions import ArgumentError, CheckpointError
from xsky.train.checkpoint import (
    FORMAT,
    checkpoints,
    diff_config,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _tensors(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), v), "b": torch.arange(4.0)[::2]}  # a non-contiguous view


def test_round_trip_keeps_tensors_and_state(tmp_path):
    p = save_checkpoint(tmp_path, 7, _tensors(1.5), {"sampler": {"index": 12}}, keep=None)
    assert p.name == "step-00000007"
    tensors, state = load_checkpoint(p)
    torch.testing.assert_close(tensors["w"], torch.full((2, 3), 1.5))
    torch.testing.assert_close(tensors["b"], torch.tensor([0.0, 2.0]))
    assert state["step"] == 7 and state["sampler"] == {"index": 12}
    assert state["format"] == FORMAT


def test_keep_prunes_the_oldest_and_latest_is_the_highest_step(tmp_path):
    for s in (3, 1, 2, 5):
        save_checkpoint(tmp_path, s, _tensors(s), {}, keep=2)
    assert [s for s, _ in checkpoints(tmp_path)] == [3, 5]
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path))
    assert float(tensors["w"][0, 0]) == 5.0


def test_foreign_and_torn_folders_are_neither_listed_nor_deleted(tmp_path):
    foreign = tmp_path / "step-00000009"  # looks like a checkpoint, but xsky did not write it
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    torn = tmp_path / "step-00000008"  # a kill before state.json was written
    torn.mkdir()
    (torn / "tensors.safetensors").write_bytes(b"partial")
    tmp = tmp_path / ".tmp-step-00000010-abcd"  # a kill before the rename
    tmp.mkdir()
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, s, _tensors(s), {}, keep=1)
    assert [s for s, _ in checkpoints(tmp_path)] == [3]
    assert (foreign / "notes.txt").read_text() == "mine" and torn.exists()
    with pytest.raises(CheckpointError, match="not an xsky checkpoint"):
        save_checkpoint(tmp_path, 9, _tensors(9), {})
    assert (foreign / "notes.txt").read_text() == "mine"


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 4, _tensors(1.0), {"a": 1})
    save_checkpoint(tmp_path, 4, _tensors(2.0), {"a": 2})
    tensors, state = load_checkpoint(tmp_path / "step-00000004")
    assert float(tensors["w"][0, 0]) == 2.0 and state["a"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000004"]


def test_a_failed_write_leaves_no_temporary_folder(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, _tensors(1.0), {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_damaged_or_foreign_checkpoints_are_refused_with_the_fix(tmp_path):
    p = save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    (p / "tensors.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(p)
    other = tmp_path / "x"
    other.mkdir()
    (other / "state.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not an xsky training checkpoint"):
        load_checkpoint(other)
    with pytest.raises(ArgumentError, match="keep must be at least 1"):
        save_checkpoint(tmp_path, 2, _tensors(1.0), {}, keep=0)


@pytest.mark.parametrize(("saved", "current", "path"), [
    ({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2}}, None),
    ({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}, "b.c"),
    ({"a": 1}, {"a": 1, "z": 0}, "z"),
    ({"o": [{"t": 0.1}, {"t": 0.2}]}, {"o": [{"t": 0.1}, {"t": 0.3}]}, "o[1].t"),
    ({"o": [1, 2]}, {"o": [1]}, "o"),
    (1, 2, "<root>"),
])
def test_diff_config_names_the_first_differing_field(saved, current, path):
    assert diff_config(saved, current) == path
