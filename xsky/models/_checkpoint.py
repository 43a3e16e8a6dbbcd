"""Safe reading of weight files.

Files are read with ``torch.load(weights_only=True)`` (or safetensors): a file that needs
arbitrary unpickling is refused unless the caller trusts it explicitly, because unpickling
can run any code the file's author chose.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._interop import require
from ..exceptions import CheckpointError, UnsafeCheckpointError

__all__ = ["file_sha256", "load_checkpoint", "strip_prefix"]


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, hex encoded."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Read a checkpoint file onto the CPU without running untrusted code.

    Parameters
    ----------
    path
        A ``.pt``/``.pth``/``.ckpt`` file written by ``torch.save``, or a ``.safetensors`` file.
    trust
        Allow full unpickling for a file that cannot be read with ``weights_only=True``.
        Only set this for a file whose origin you trust: unpickling can execute code.

    Returns
    -------
    object
        Whatever the file holds (usually a dict of tensors, or a dict holding one).

    Raises
    ------
    CheckpointError
        The file is missing or unreadable.
    UnsafeCheckpointError
        The file needs arbitrary unpickling and ``trust`` is False.
    """
    torch = require("torch", "loading weights")
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"weights file {str(p)!r} does not exist; pass the path of a local file")
    if p.suffix == ".safetensors":
        st = require("safetensors.torch", "reading .safetensors files")
        return st.load_file(str(p), device="cpu")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise UnsafeCheckpointError(
                f"{str(p)!r} cannot be read with torch.load(weights_only=True): it holds "
                f"objects other than tensors and plain containers ({_first_line(err)}). "
                "Loading it needs full unpickling, which can run arbitrary code from the file. "
                "If you trust its origin, pass trust=True; otherwise re-save its state_dict "
                "with torch.save(state_dict) or safetensors."
            ) from None
        return torch.load(p, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"could not read weights file {str(p)!r}: {_first_line(err)}; "
            "is it a torch.save / safetensors file, and complete?"
        ) from err


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keys that start with ``prefix``, with it removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix)}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
