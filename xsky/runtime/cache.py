"""Per-process model cache: each process builds (or receives) a model once per device.

Keys are ``(model name, weights sha256, device)``. The dask graph carries only a
:class:`~xsky.models.ModelRef`; inside a task :func:`get_model` returns the cached model or
rebuilds it from the registry, so weights never travel in the graph.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import XSkyError

if TYPE_CHECKING:
    from ..models import EmbeddingModel, ModelRef

__all__ = ["clear_cache", "get_model", "get_or_create", "put_model"]

_CACHE: dict[tuple[str, str, str], EmbeddingModel] = {}
_LOCK = threading.RLock()
BUILDS: dict[tuple[str, str, str], int] = {}  # how often each key was built here (for tests)
_RECIPES: dict[tuple[Any, ...], ModelRef] = {}  # (name, weights file state, options) -> ref


def put_model(model: EmbeddingModel, device: str = "cpu") -> None:
    """Put a ready model into this process's cache."""
    with _LOCK:
        _CACHE[(*model.ref.key, device)] = model


def clear_cache() -> None:
    """Forget every cached model of this process (they are rebuilt on next use)."""
    with _LOCK:
        _CACHE.clear()
        BUILDS.clear()
        _RECIPES.clear()


def get_model(ref: ModelRef, device: str = "cpu") -> EmbeddingModel:
    """The model for ``ref`` on ``device``, built at most once per process."""
    key = (*ref.key, device)
    model = _CACHE.get(key)
    if model is not None:
        return model
    with _LOCK:
        model = _CACHE.get(key)
        if model is not None:
            return model
        base = _CACHE.get((*ref.key, "cpu"))
        if base is None:
            base = _build(ref)
            _CACHE[(*ref.key, "cpu")] = base
        if device != "cpu":
            import copy

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
        raise XSkyError(
            f"model {ref.spec.name!r} (weights {ref.sha256[:12]}) is not available in this "
            "process: it was created in another process and is not in the registry here. "
            "On a dask cluster, ship it to the workers once with "
            "xsky.runtime.preload(model, client), or register a factory in a module the "
            "workers import."
        )
    model = create_model(ref.name, ref.weights, **dict(ref.overrides))
    if model.weights_sha256 != ref.sha256:
        raise XSkyError(
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

    A model is rebuilt only when its weights files change (size or modification time).
    """
    from ..models import create_model

    key = _recipe_key(name, weights, options)
    ref = _RECIPES.get(key)
    if ref is not None:
        model = _CACHE.get((*ref.key, "cpu"))
        if model is not None:
            return model
    model = create_model(name, weights, **options)
    with _LOCK:
        _RECIPES[key] = model.ref
        _CACHE[(*model.ref.key, "cpu")] = model
    return model
