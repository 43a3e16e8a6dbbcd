"""The one checkpoint loader: safe reading, digest check and a key report.

Files are read with ``torch.load(weights_only=True)`` (or safetensors): a file that needs
arbitrary unpickling is refused unless the caller trusts it explicitly, because unpickling
can run any code the file's author chose. A file's SHA-256 is checked when the model card
knows it.

Loading is three steps, the middle one per model family (timm's ``checkpoint_filter_fn``):

1. :func:`load_checkpoint` reads a file;
2. the family's filter maps what the file holds to the module's key names (test-tiny:
   identity; SatCLIP: ``visual_state`` / ``read_location_state``; SkySense: the split or
   full layouts);
3. :func:`apply_state` matches keys and shapes, fills a :class:`LoadReport` (loaded,
   missing, unexpected, skipped, ...) and, when strict, raises a
   :class:`~xsky.exceptions.CheckpointError` naming the keys.

:func:`load_weights` chains the three for the simple case of one file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._interop import require
from ..exceptions import CheckpointError, UnsafeCheckpointError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "LoadReport",
    "apply_state",
    "file_sha256",
    "identity_filter",
    "load_checkpoint",
    "load_weights",
    "strip_prefix",
    "verify_sha256",
]


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, hex encoded."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike[str], sha256: str | None) -> None:
    """Raise :class:`CheckpointError` when ``sha256`` is known and the file's differs."""
    if sha256 is None:
        return
    got = file_sha256(path)
    if got != sha256.lower():
        raise CheckpointError(
            f"weights file {str(path)!r} has sha256 {got}, but its model card expects "
            f"{sha256.lower()}; the file is incomplete, corrupt or another version. "
            "Download it again, or check that it is the file the model card names"
        )


def load_checkpoint(path: str | os.PathLike[str], *, trust: bool = False,
                    sha256: str | None = None) -> Any:
    """Read a checkpoint file onto the CPU without running untrusted code.

    Parameters
    ----------
    path
        A ``.pt``/``.pth``/``.ckpt`` file written by ``torch.save``, or a ``.safetensors`` file.
    trust
        Allow full unpickling for a file that cannot be read with ``weights_only=True``.
        Only set this for a file whose origin you trust: unpickling can execute code.
    sha256
        Expected SHA-256 (from the model card); ``None`` skips the check.

    Returns
    -------
    object
        Whatever the file holds (usually a dict of tensors, or a dict holding one).

    Raises
    ------
    CheckpointError
        The file is missing, unreadable or has another digest than ``sha256``.
    UnsafeCheckpointError
        The file needs arbitrary unpickling and ``trust`` is False.
    """
    torch = require("torch", "loading weights")
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"weights file {str(p)!r} does not exist; pass the path of a local file")
    verify_sha256(p, sha256)
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


# ------------------------------------------------------------------------ key matching


@dataclass
class LoadReport:
    """What a load did with each key of the weight file(s).

    Attributes
    ----------
    source
        The path read.
    loaded
        Number of tensors copied into the model.
    missing
        Model weights absent from the file(s) (left at their initial values; an error when
        loading strictly).
    unexpected
        Keys the model does not have (an error when strict).
    skipped
        Known extras the family filter leaves out on purpose (pretraining heads, branches
        the model does not build, ...).
    rebuilt
        Buffers in the file that are never loaded, because the model rebuilds them.
    defaulted
        Model weights absent from the file(s) that the family accepts at a default value.
    resized
        Tensors adapted from a stored shape to the model's (e.g. position embeddings).
    what
        Name of the weights in :meth:`__str__` (``"SkySense weights"``).
    """

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    defaulted: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    what: str = "weights"

    def __str__(self) -> str:
        lines = [f"{self.what} from {self.source}: {self.loaded} tensors loaded"]
        for name in ("missing", "unexpected", "skipped", "rebuilt", "defaulted", "resized"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name} ({len(keys)}): {summarise_keys(keys)}")
        return "\n".join(lines)


def summarise_keys(keys: Sequence[str], limit: int = 12) -> str:
    """``a, b, c, ... (n more)``."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def identity_filter(obj: Any, model: Any = None) -> dict[str, Any]:
    """The filter of a model whose files are its own ``state_dict`` (test-tiny)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"the weights file holds a {type(obj).__name__}, not a state dict; save it with "
            "torch.save(model.state_dict(), path)"
        )
    return dict(obj)


_FIX = ("Check that the file belongs to this model, or pass strict=False to keep the "
        "initial values of missing weights and skip unexpected keys.")


def apply_state(
    module: nn.Module,
    state: Mapping[str, Any],
    *,
    report: LoadReport,
    strict: bool = True,
    classify: Callable[[str], str | None] | None = None,
    adapt: Callable[[str, Any, Any], Any | None] | None = None,
    optional: Callable[[str], bool] | None = None,
    prefix: str | None = None,
    fix: str = _FIX,
    shape_fix: str = "",
) -> LoadReport:
    """Load a (filtered) state dict into ``module`` and report what happened to every key.

    Parameters
    ----------
    module
        The module to load into.
    state
        Tensors keyed like ``module.state_dict()`` (the family filter's output).
    report
        The report to fill (the filter may already have recorded skipped keys).
    strict
        Raise when a model weight is missing or a key is unexpected.
    classify
        ``key -> "skipped" | "rebuilt" | None``: file keys the family leaves out on purpose.
    adapt
        ``(key, file tensor, model tensor) -> tensor | None``: adapt a tensor of another
        shape (reported as ``resized``), or ``None`` to report a shape mismatch.
    optional
        ``key -> bool``: model weights that may be absent (reported as ``defaulted``).
    prefix, fix, shape_fix
        Start of the error message (default: ``"weights '<source>' do not match the
        model"``), and the advice after a key / a shape mismatch.

    Raises
    ------
    CheckpointError
        Shapes that do not fit (always), or missing/unexpected keys when ``strict``; the
        message names the keys. Nothing is loaded when it raises.
    """
    own = module.state_dict()
    head = prefix or f"{report.what} {report.source!r} do not match the model"
    to_load: dict[str, Any] = {}
    mismatched: list[str] = []
    for key, value in state.items():
        kind = classify(key) if classify is not None else None
        if kind is not None:
            getattr(report, kind).append(key)
            continue
        if key not in own or not hasattr(value, "shape"):
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            new = adapt(key, value, own[key]) if adapt is not None else None
            if new is None:
                mismatched.append(f"{key}: file {tuple(value.shape)} vs model "
                                  f"{tuple(own[key].shape)}")
                continue
            report.resized.append(key)
            value = new
        to_load[key] = value
    if mismatched:
        raise CheckpointError(
            f"{head}: {len(mismatched)} weight(s) have other shapes than the model builds: "
            f"{summarise_keys(mismatched, 8)}. {shape_fix or fix}".rstrip()
        )
    for k in own:
        if k not in to_load:
            (report.defaulted if optional is not None and optional(k) else report.missing).append(k)
    if strict and (report.missing or report.unexpected):
        msg = []
        if report.missing:
            msg.append(f"missing {len(report.missing)} required weight(s): "
                       f"{summarise_keys(report.missing)}")
        if report.unexpected:
            msg.append(f"{len(report.unexpected)} unexpected key(s): "
                       f"{summarise_keys(report.unexpected)}")
        raise CheckpointError(f"{head}: " + "; ".join(msg) + f". {fix}".rstrip())
    module.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    return report


def load_weights(
    module: nn.Module,
    path: str | os.PathLike[str],
    filter_fn: Callable[[Any, Any], Mapping[str, Any]] = identity_filter,
    *,
    strict: bool = True,
    trust: bool = False,
    sha256: str | None = None,
    what: str = "weights",
    **options: Any,
) -> LoadReport:
    """Read one weights file, apply the family filter and load it (see :func:`apply_state`).

    Examples
    --------
    >>> import torch, tempfile, os
    >>> net = torch.nn.Linear(2, 3)
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save(net.state_dict(), path)
    >>> load_weights(torch.nn.Linear(2, 3), path).loaded
    2
    """
    report = LoadReport(source=str(path), what=what)
    state = filter_fn(load_checkpoint(path, trust=trust, sha256=sha256), module)
    return apply_state(module, state, report=report, strict=strict, **options)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
