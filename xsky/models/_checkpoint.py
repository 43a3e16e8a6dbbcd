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

import contextlib
import contextvars
import hashlib
import io
import os
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    "load_checkpoint_and_digest",
    "load_weights",
    "pinned_digests",
    "strip_prefix",
    "unwrap_state",
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
    _check_digest(path, file_sha256(path), sha256, _CARD_ADVICE)


_CARD_ADVICE = ("its model card expects {want}; the file is incomplete, corrupt or another "
                "version. Download it again, or check that it is the file the model card names")
_PIN_ADVICE = ("the graph was built with {want}: the file changed after the graph was built "
               "(or differs on this machine), so it is not read. Restore the file, or build "
               "the graph again with the new file")


def _check_digest(path: str | os.PathLike[str], got: str, want: str, advice: str) -> None:
    if got != want.lower():
        raise CheckpointError(f"weights file {str(path)!r} has sha256 {got}, but "
                              + advice.format(want=want.lower()))


# resolved path -> sha256 of the files a process may read while it rebuilds a model from a
# graph's reference; None outside such a rebuild. A context variable, so that each thread
# (a dask worker thread) has its own.
_PINNED: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "xsky_pinned_weights", default=None)


@contextlib.contextmanager
def pinned_digests(files: Mapping[str, str] | Sequence[tuple[str, str]]) -> Iterator[None]:
    """Within the block, :func:`load_checkpoint` reads only these files, with these digests.

    The runtime uses it when a process rebuilds a model from a graph's
    :class:`~xsky.models.ModelRef` (or a location encoder from its
    :class:`~xsky.models.LocationRef`): each file's bytes are checked against the digest
    recorded where the graph was built *before* they are unpickled, so a file replaced in
    between is refused (:class:`CheckpointError`) and never run, even with ``trust=True``.

    Parameters
    ----------
    files
        ``{resolved path: sha256}`` (or its items).
    """
    pins = {str(Path(k).expanduser().resolve()): str(v).lower() for k, v in dict(files).items()}
    token = _PINNED.set(pins)
    try:
        yield
    finally:
        _PINNED.reset(token)


@contextlib.contextmanager
def pin_unless_pinned(files: Mapping[str, str] | Sequence[tuple[str, str]]) -> Iterator[None]:
    """:func:`pinned_digests` unless digests are already pinned (a rebuild from a graph's
    reference), whose pins then stay: a nested pin never loosens an outer one."""
    if _PINNED.get() is not None:
        yield
        return
    with pinned_digests(files):
        yield


def load_checkpoint_and_digest(path: str | os.PathLike[str], *, trust: bool = False,
                               sha256: str | None = None) -> tuple[Any, str]:
    """:func:`load_checkpoint`, and the sha256 of exactly the bytes it read (what a graph
    records, so that another process can check the file before reading it)."""
    p = Path(path).expanduser()
    pins = _PINNED.get()
    if pins is not None and str(p.resolve()) in pins:
        return load_checkpoint(p, trust=trust, sha256=sha256), pins[str(p.resolve())]
    if pins is not None or not p.is_file():
        return load_checkpoint(p, trust=trust, sha256=sha256), ""  # raises
    digest = file_sha256(p)
    with pinned_digests({str(p): digest}):
        return load_checkpoint(p, trust=trust, sha256=sha256), digest


def _sniff(p: Path, head: bytes) -> None:
    """Refuse a file that is plainly not a torch.save file (an HTML error page, JSON, text)
    before torch tries to unpickle it; ``head`` is its first bytes."""
    head = head[:512]
    if not head:
        raise CheckpointError(
            f"weights file {str(p)!r} is empty; the download or copy did not finish. "
            "Download it again"
        )
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip format / a pickle
        return
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return  # binary: torch tells what it is
    if not all(c.isprintable() or c in "\r\n\t" for c in text):
        return
    start = " ".join(text.split())[:80]
    low = start.lower()
    if low.startswith(("<!doctype html", "<html", "<?xml", "<head")) or "<html" in low:
        kind = ("an HTML page (probably an error or login page saved by a failed download, "
                "e.g. a 404)")
    elif low.startswith(("{", "[")):
        kind = "a JSON file"
    else:
        kind = "a text file"
    raise CheckpointError(
        f"weights file {str(p)!r} is {kind}, not a torch.save / safetensors checkpoint; it "
        f"starts with {start!r}. Download the weights again (check the URL, and that the file "
        "is the size the model card gives), or pass the path of the real checkpoint"
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
        The file is then read once and its bytes are checked (``sha256``, and the digest
        pinned by :func:`pinned_digests`) before they are unpickled.
    sha256
        Expected SHA-256 (from the model card); ``None`` skips the check.

    Returns
    -------
    object
        Whatever the file holds (usually a dict of tensors, or a dict holding one).

    Raises
    ------
    CheckpointError
        The file is missing, a directory, no checkpoint (e.g. a saved HTML page), unreadable,
        or has another digest than ``sha256`` (or than the one pinned for it).
    UnsafeCheckpointError
        The file needs arbitrary unpickling and ``trust`` is False.
    """
    torch = require("torch", "loading weights")
    p = Path(path).expanduser()
    if p.is_dir():
        inside = sorted(f.name for f in p.iterdir()
                        if f.suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"))
        found = f" (it holds {', '.join(inside[:6])})" if inside else ""
        raise CheckpointError(
            f"weights {str(p)!r} is a directory{found}, but this model reads one weights "
            "file; pass the path of the file itself"
        )
    if not p.is_file():
        raise CheckpointError(f"weights file {str(p)!r} does not exist; pass the path of a local file")
    pins = _PINNED.get()
    pinned: str | None = None
    if pins is not None:
        pinned = pins.get(str(p.resolve()))
        if pinned is None:
            raise CheckpointError(
                f"weights file {str(p)!r} is not among the files read where the graph was "
                f"built ({', '.join(sorted(pins)) or 'none'}); the weights changed after the "
                "graph was built, so it is not read. Build the graph again"
            )
    data: bytes | None = None
    if trust:
        # one read: the bytes checked are the bytes unpickled (nothing can swap in between)
        data = p.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if pinned is not None:
            _check_digest(p, got, pinned, _PIN_ADVICE)
        if sha256 is not None:
            _check_digest(p, got, sha256, _CARD_ADVICE)
    else:
        if pinned is not None:
            _check_digest(p, file_sha256(p), pinned, _PIN_ADVICE)
        verify_sha256(p, sha256)
    if p.suffix == ".safetensors":
        st = require("safetensors.torch", "reading .safetensors files")
        try:
            return st.load(data) if data is not None else st.load_file(str(p), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(
                f"could not read safetensors file {str(p)!r}: {_first_line(err)}; is it "
                "complete? Download it again"
            ) from err
    if data is None:
        with open(p, "rb") as f:
            _sniff(p, f.read(512))
    else:
        _sniff(p, data)

    def stream() -> Any:
        return io.BytesIO(data) if data is not None else open(p, "rb")

    try:
        with stream() as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        with stream() as f:
            real_pickle = _is_real_pickle(err, f)
        if not real_pickle:
            raise CheckpointError(
                f"could not read weights file {str(p)!r}: it is neither a torch.save nor a "
                "safetensors checkpoint, or it is corrupt (torch: "
                f"{_unsafe_reason(err, default=type(err).__name__)}). Download it again"
            ) from None
        if not trust:
            raise UnsafeCheckpointError(
                f"{str(p)!r} cannot be read with torch.load(weights_only=True): it holds "
                f"objects other than tensors and plain containers ({_unsafe_reason(err)}). "
                "Loading it needs full unpickling, which can run arbitrary code from the file. "
                "If you trust its origin, pass trust=True; otherwise re-save its state_dict "
                "with torch.save(state_dict) or safetensors."
            ) from None
        try:
            with stream() as f:
                return torch.load(f, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise CheckpointError(
                f"could not unpickle weights file {str(p)!r} with trust=True: "
                f"{type(err2).__name__}: {_first_line(err2)}; it needs code that is not "
                "importable here, or it is corrupt"
            ) from err2
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"could not read weights file {str(p)!r}: {_first_line(err)}; "
            "is it a torch.save / safetensors file, and complete? Download it again"
        ) from err


def _is_real_pickle(err: BaseException, stream: Any) -> bool:
    """Whether torch's ``weights_only`` refusal is about a real pickle (custom classes,
    another pickle protocol) rather than about bytes that are no pickle at all.

    ``stream`` is the file, at its start; its first pickle is parsed with
    :mod:`pickletools`, which reads the opcodes without running any of them.
    """
    if "Unsupported global" in str(err):
        return True
    import pickletools

    try:
        if stream.read(1) != b"\x80":
            return False
        stream.seek(0)
        for _ in pickletools.genops(stream):
            pass
    except Exception:  # not a well-formed pickle
        return False
    return True


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


#: Keys under which training code nests a state dict (Lightning: ``state_dict``).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def unwrap_state(obj: Any, model: Any = None, *,
                 source: str = "the weights file") -> dict[str, Any]:
    """The state dict in what a weights file holds, unwrapped where that is unambiguous.

    * a mapping of tensors is returned as it is;
    * a mapping without tensors at its top level, with exactly one of :data:`WRAPPER_KEYS`
      holding tensors (a Lightning ``{"state_dict": ..., "epoch": ...}`` file, or
      ``{"model": ...}``), is unwrapped;
    * then, when no key is one of ``model``'s but all keys share one first component
      whose removal makes them match (Lightning's ``model.``, DataParallel's ``module.``),
      that component is removed.

    Raises
    ------
    CheckpointError
        ``obj`` is a bare tensor, not a mapping, or a mapping without (or with several
        nested) state dicts.
    """
    if _is_tensor(obj):
        raise CheckpointError(
            f"{source} holds a single tensor of shape {tuple(obj.shape)}, not a state dict "
            "(a dict of named tensors); save it with torch.save(model.state_dict(), path)"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not a state dict; save it with "
            "torch.save(model.state_dict(), path)"
        )
    state = dict(obj)
    if not any(_is_tensor(v) for v in state.values()):
        nested = [k for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)
                  and any(_is_tensor(v) for v in state[k].values())]
        if len(nested) != 1:
            what = (f"several nested state dicts ({', '.join(map(repr, nested))})" if nested
                    else f"no tensors (keys: {summarise_keys([str(k) for k in state], 8)})")
            raise CheckpointError(
                f"{source} holds {what}; save the model's own state dict with "
                "torch.save(model.state_dict(), path)"
            )
        state = dict(state[nested[0]])
    if model is not None and hasattr(model, "state_dict"):
        own = set(model.state_dict())
        keys = [k for k in state if isinstance(k, str)]
        if own and keys and not own & set(keys) and all("." in k for k in keys) \
                and len({k.split(".", 1)[0] for k in keys}) == 1:
            stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
            if own & set(stripped):
                state = stripped
    return state


def identity_filter(obj: Any, model: Any = None) -> dict[str, Any]:
    """The filter of a model whose files are its own ``state_dict`` (test-tiny); a
    Lightning-style file is unwrapped (:func:`unwrap_state`)."""
    return unwrap_state(obj, model)


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
    obj = load_checkpoint(path, trust=trust, sha256=sha256)
    try:
        state = filter_fn(obj, module)
    except CheckpointError as err:
        if str(path) in str(err):
            raise
        raise CheckpointError(f"{what} {str(path)!r}: {err}") from None
    return apply_state(module, state, report=report, strict=strict, **options)


def _unsafe_reason(err: BaseException, default: str = "the restricted unpickler refused it"
                   ) -> str:
    """The line of torch's long ``weights_only`` message that says what it refused."""
    for line in str(err).splitlines():
        if "Unsupported global" in line:
            return line.strip().split(" Please use")[0].strip()[:300]
        if "Unsupported operand" in line or "invalid load key" in line:
            return line.strip()[:300]
    return default


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
