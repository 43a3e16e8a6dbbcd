"""The one per-process cache of image models and location encoders.

A dask graph carries only a small reference: a :class:`~xsky.models.ModelRef` for an image
model, a :class:`~xsky.models.LocationRef` for a location encoder. Inside a task
:func:`get_model` returns the cached object or rebuilds it (from the registry, or from the
encoder's checkpoint), so weights never travel in the graph and each process builds each
model at most once.

Keys are ``(model name, weights sha256, variant, device)`` for image models (the variant
digests the spec and the ``create_model`` options, so ``window=32`` never reuses the plain
model) and ``("location", digest)`` for location encoders (which run on the CPU).

A process that rebuilds a model (or encoder) from a graph's reference reads each weights
file only if its bytes have the sha256 recorded where the graph was built
(:func:`~xsky.models._checkpoint.pinned_digests`): with ``trust=True`` a file swapped in
between is refused before it is unpickled. :data:`BUILDS` counts how often this
process built each key; :func:`clear_cache` forgets both kinds.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, overload

from ..exceptions import ArgumentError, CheckpointError, ModelError
from ..models import LocationRef, ModelRef

if TYPE_CHECKING:
    from ..models import EmbeddingModel
    from ..models.satclip import LocationEncoder

__all__ = [
    "BUILDS",
    "clear_cache",
    "get_location_encoder",
    "get_model",
    "get_or_create",
    "load_location_encoder",
    "put_location_encoder",
    "put_model",
]

# values are EmbeddingModel (4-tuple keys) or LocationEncoder (2-tuple keys): the key
# lengths differ, so the two kinds can never collide
_CACHE: dict[tuple[str, ...], Any] = {}
_LOCK = threading.RLock()
#: How often each key was built (or, for location encoders, read from disk) in this process.
BUILDS: dict[tuple[str, ...], int] = {}
_RECIPES: dict[tuple[Any, ...], ModelRef] = {}  # (name, weights file state, options) -> ref
# (resolved path, size, mtime_ns, trust) -> location cache key of the encoder read from it
_LOCATION_FILES: dict[tuple[str, int, int, bool], tuple[str, str]] = {}


def put_model(model: EmbeddingModel, device: str = "cpu") -> None:
    """Put a ready model into this process's cache."""
    with _LOCK:
        _CACHE[(*model.ref.key, device)] = model


def clear_cache() -> None:
    """Forget every cached image model and location encoder of this process.

    They are rebuilt (or re-read from their checkpoint) on next use; in-memory objects that
    were never registered anywhere else become unavailable.
    """
    with _LOCK:
        _CACHE.clear()
        BUILDS.clear()
        _RECIPES.clear()
        _LOCATION_FILES.clear()


@overload
def get_model(ref: ModelRef, device: str = "cpu") -> EmbeddingModel: ...


@overload
def get_model(ref: LocationRef, device: str = "cpu") -> LocationEncoder: ...


def get_model(ref: ModelRef | LocationRef, device: str = "cpu") -> EmbeddingModel | LocationEncoder:
    """The model (or location encoder) for ``ref`` on ``device``, built at most once per process.

    Parameters
    ----------
    ref
        A :class:`~xsky.models.ModelRef` (image model) or :class:`~xsky.models.LocationRef`
        (location encoder, see :func:`get_location_encoder`).
    device
        Torch device of an image model; location encoders run on ``"cpu"`` only.

    Raises
    ------
    ModelError
        The model exists only in another process (not in the registry here).
    CheckpointError
        It was rebuilt here with different weights than where the graph was built.
    """
    if isinstance(ref, LocationRef):
        if device != "cpu":
            raise ArgumentError(
                f"location encoders run on the CPU; got device={device!r} for {ref.name!r}"
            )
        return get_location_encoder(ref)
    key = (*ref.key, device)
    model = _CACHE.get(key)
    if model is not None:
        return cast("EmbeddingModel", model)
    with _LOCK:
        model = _CACHE.get(key)
        if model is not None:
            return cast("EmbeddingModel", model)
        base = cast("EmbeddingModel | None", _CACHE.get((*ref.key, "cpu")))
        if base is None:
            base = _build(ref)
            _CACHE[(*ref.key, "cpu")] = base
        if device != "cpu":
            model = copy.deepcopy(base).to(device)
            model.ref = base.ref
            model.weights_sha256 = base.weights_sha256
        else:
            model = base
        _CACHE[key] = model
        BUILDS[key] = BUILDS.get(key, 0) + 1
        return model


def _build(ref: ModelRef) -> EmbeddingModel:
    from ..models import create_model, list_models

    if ref.name is None or ref.name not in list_models():
        raise ModelError(
            f"model {ref.spec.name!r} (weights {ref.sha256[:12]}) is not available in this "
            "process: it was created in another process and is not in the registry here. "
            "On a dask cluster, ship it to the workers once with "
            "xsky.runtime.preload(model, client), or register a factory in a module the "
            "workers import."
        )
    if ref.weights is not None:
        from ..models._checkpoint import pinned_digests

        if not ref.files:
            raise CheckpointError(
                f"the graph's reference to model {ref.name!r} records no digest of its weights "
                f"file(s) {ref.weights!r}, so they cannot be checked before they are read; "
                "build the graph again with xsky.models.create_model (or xsky.embed)"
            )
        # every file is checked against the digest recorded where the graph was built before
        # it is read: a file swapped in between is never unpickled, even with trust=True
        with pinned_digests(ref.files):
            model = create_model(ref.name, ref.weights, **dict(ref.overrides))
    else:
        model = create_model(ref.name, ref.weights, **dict(ref.overrides))
    if model.weights_sha256 != ref.sha256:
        raise CheckpointError(
            f"model {ref.name!r} rebuilt in this process has weights {model.weights_sha256[:12]}, "
            f"but the graph expects {ref.sha256[:12]}; the weights file "
            f"{ref.weights!r} differs between processes (or the model is not deterministic)"
        )
    return model


def _recipe_key(name: str, weights: Any, options: dict[str, Any]) -> tuple[Any, ...]:
    state: tuple[Any, ...] = ()
    if weights is not None:
        p = Path(weights).expanduser()
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        state = tuple((str(f), *_stat(f)) for f in files)
    return (name, state, repr(sorted(options.items())))


def _stat(f: Path) -> tuple[int, int]:
    try:
        st = os.stat(f)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def get_or_create(name: str, weights: Any = None, **options: Any) -> EmbeddingModel:
    """``create_model(name, weights, **options)``, reusing this process's cached instance.

    A model is rebuilt only when its weights files change (size or modification time) or
    the options differ: each set of options has its own cache entry (see
    :attr:`~xsky.models.ModelRef.key`), so ``window=32`` never changes what the plain model
    computes.
    """
    from ..models import create_model

    key = _recipe_key(name, weights, options)
    ref = _RECIPES.get(key)
    if ref is not None:
        model = _CACHE.get((*ref.key, "cpu"))
        if model is not None:
            return cast("EmbeddingModel", model)
    model = create_model(name, weights, **options)
    with _LOCK:
        _RECIPES[key] = model.ref
        _CACHE[(*model.ref.key, "cpu")] = model
    return model


# --------------------------------------------------------------------------------------
# Location encoders
# --------------------------------------------------------------------------------------


def _location_key(digest: str) -> tuple[str, str]:
    return ("location", digest)  # the same as LocationRef.key


def _location_digest(enc: LocationEncoder) -> str:
    from ..models._base import state_dict_sha256

    # the features' convention is not in the state dict, so it goes into the digest
    text = f"{state_dict_sha256(enc)}:{enc.posenc.harmonics_calculation}"
    return hashlib.sha256(text.encode()).hexdigest()


def put_location_encoder(enc: LocationEncoder, *, snapshot: bool = False) -> str:
    """Cache ``enc`` under the digest of its weights and harmonics convention.

    Parameters
    ----------
    enc
        An eval-mode :class:`~xsky.models.satclip.LocationEncoder`.
    snapshot
        Cache a private deep copy, so that later in-place edits of the user's encoder
        cannot change what a graph built now computes.

    Returns
    -------
    str
        The digest (a :class:`~xsky.models.LocationRef`'s ``sha256``). An encoder with the
        same digest already in the cache is kept.
    """
    digest = _location_digest(enc)
    key = _location_key(digest)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = copy.deepcopy(enc) if snapshot else enc
    return digest


def load_location_encoder(path: str | os.PathLike[str], trust: bool = False, *,
                          file_sha256: str | None = None) -> tuple[LocationEncoder, str]:
    """The cached encoder of a SatCLIP checkpoint and its digest.

    The file is read once per process and file version (size, modification time) and
    ``trust``; :data:`BUILDS` counts the reads.

    Parameters
    ----------
    path, trust
        The checkpoint, and whether it may be fully unpickled.
    file_sha256
        The file's digest recorded where a graph was built: the bytes are checked against
        it before they are read (a replaced file is refused, never unpickled).

    Raises
    ------
    CheckpointError
        The file does not exist, or differs from ``file_sha256`` (or cannot be read
        safely: UnsafeCheckpointError).
    """
    from ..models.satclip import LocationEncoder

    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        raise CheckpointError(
            f"location-encoder checkpoint {str(p)!r} does not exist; pass the path of a local "
            "SatCLIP .ckpt (xsky.models.satclip.download_checkpoint fetches one)"
        ) from None
    fkey = (str(p), st.st_size, st.st_mtime_ns, bool(trust))
    with _LOCK:
        key = _LOCATION_FILES.get(fkey)
        enc = _CACHE.get(key) if key is not None else None
        if key is None or enc is None:
            if file_sha256 is not None:
                from ..models._checkpoint import pinned_digests

                with pinned_digests({str(p): file_sha256}):
                    loaded = LocationEncoder.from_checkpoint(p, trust=trust)
            else:
                loaded = LocationEncoder.from_checkpoint(p, trust=trust)
            key = _location_key(put_location_encoder(loaded))
            BUILDS[key] = BUILDS.get(key, 0) + 1
            _LOCATION_FILES[fkey] = key
            enc = _CACHE[key]
        return cast("LocationEncoder", enc), key[1]


def get_location_encoder(ref: LocationRef) -> LocationEncoder:
    """The location encoder for ``ref`` in this process, read from its file at most once.

    Raises
    ------
    ModelError
        The encoder exists only in the process that created it (``ref.path`` is ``None``).
    CheckpointError
        ``ref.path`` is missing here, or holds different weights than where the graph
        was built.
    """
    enc = _CACHE.get(ref.key)
    if enc is not None:
        return cast("LocationEncoder", enc)
    if ref.path is None:
        raise ModelError(
            f"location encoder {ref.name!r} (weights {ref.sha256[:12]}) exists only in the "
            "process that created it; save it with torch.save and pass the checkpoint path, "
            "or load it with LocationEncoder.from_checkpoint(path) so workers can read the file"
        )
    if ref.trust and ref.file_sha256 is None:
        raise CheckpointError(
            f"the graph's reference to location encoder {ref.name!r} allows full unpickling "
            f"(trust=True) of {ref.path!r} but records no digest of the file, so it cannot be "
            "checked before it is unpickled; build the graph again with xsky.location_embed"
        )
    loaded, digest = load_location_encoder(ref.path, ref.trust, file_sha256=ref.file_sha256)
    if digest != ref.sha256:
        raise CheckpointError(
            f"checkpoint {ref.path!r} holds different weights in this process ({digest[:12]}) "
            f"than where the graph was built ({ref.sha256[:12]}); the file changed or differs "
            "between machines"
        )
    return loaded
