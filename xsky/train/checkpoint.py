"""Atomic training checkpoints: safetensors for tensors, a small JSON for the rest.

A checkpoint is a folder ``step-<8 digits>`` holding ``tensors.safetensors`` and
``state.json``. It is written into a hidden temporary sibling and renamed into place, so a
run killed at any moment leaves either the previous checkpoints or the new one, never a torn
one. Only folders this module wrote (``state.json`` with the format tag) are ever listed or
pruned: nothing else in the folder is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..exceptions import ArgumentError, CheckpointError

__all__ = ["FORMAT", "checkpoints", "diff_config", "latest_checkpoint", "load_checkpoint",
           "save_checkpoint"]

#: Tag in every ``state.json``; a folder without it is not an xsky checkpoint.
FORMAT = "xsky.train.checkpoint/1"
_NAME = re.compile(r"step-(\d{8})")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _is_checkpoint(path: Path) -> bool:
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def checkpoints(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir() and _is_checkpoint(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint in ``directory``, or ``None``."""
    found = checkpoints(directory)
    return found[-1][1] if found else None


def save_checkpoint(directory: str | os.PathLike[str], step: int,
                    tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any], *,
                    keep: int | None = 2) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep`` (``None``: all).

    Parameters
    ----------
    directory
        The run's checkpoint folder (created if missing).
    step
        Optimiser steps completed.
    tensors
        Named tensors (weights, optimiser moments); stored with safetensors, so loading
        never runs pickled code.
    state
        JSON-serialisable state (configuration fingerprint, sampler cursors, scheduler).

    Returns
    -------
    pathlib.Path
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step-{int(step):08d}"
    tmp = d / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(flat, str(tmp / "tensors.safetensors"))
        body = json.dumps({"format": FORMAT, "step": int(step), **state}, indent=1,
                          sort_keys=True)
        with open(tmp / "state.json", "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / "tensors.safetensors", "rb+") as f:
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (a resumed run): replace our own
            if not _is_checkpoint(final):
                raise CheckpointError(
                    f"{str(final)!r} exists and is not an xsky checkpoint; move it away or use "
                    "another checkpoint_dir (xsky never deletes what it did not write)")
            old = d / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        if keep < 1:
            raise ArgumentError(f"keep must be at least 1 (or None for all), got {keep}")
        for _, p in checkpoints(d)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and state of one checkpoint folder.

    Raises
    ------
    CheckpointError
        The folder is not a complete xsky checkpoint or cannot be read.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not _is_checkpoint(p):
        raise CheckpointError(
            f"{str(p)!r} is not an xsky training checkpoint (no state.json with format "
            f"{FORMAT!r}); pass a step-XXXXXXXX folder written by xsky.train.fit")
    try:
        tensors = load_file(str(p / "tensors.safetensors"))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"could not read {str(p / 'tensors.safetensors')!r}: {err}; the "
                              "checkpoint is damaged: delete it to resume from an older one"
                              ) from None
    return tensors, json.loads((p / "state.json").read_text())


def diff_config(saved: Any, current: Any, path: str = "") -> str | None:
    """The dotted path of the first difference between two JSON-like configs, or ``None``."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        for key in sorted(set(saved) | set(current), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in saved or key not in current:
                return sub
            found = diff_config(saved[key], current[key], sub)
            if found is not None:
                return found
        return None
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        if len(saved) != len(current):
            return path or "<root>"
        for i, (a, b) in enumerate(zip(saved, current, strict=True)):
            found = diff_config(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if saved == current else (path or "<root>")
