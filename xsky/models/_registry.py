"""A timm-style model registry: ``register_model``, ``list_models``, ``create_model``."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import inspect
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch

from ..exceptions import (
    ArgumentError,
    CheckpointError,
    ModelError,
    UnknownModelError,
    format_choices,
)
from ._base import EmbeddingModel
from ._checkpoint import file_sha256, pin_unless_pinned
from .card import ModelCard
from .spec import ModelSpec

__all__ = ["create_model", "download_weights", "get_model_card", "get_model_spec", "list_models",
           "model_options", "register_model"]

Factory = Callable[..., EmbeddingModel]


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Factory
    spec: ModelSpec | None
    card: ModelCard | None = None


_REGISTRY: dict[str, _Entry] = {}
_LOCK = threading.Lock()
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


@overload
def register_model(name: str, factory: None = None, *, spec: ModelSpec | None = None,
                   card: ModelCard | None = None,
                   overwrite: bool = False) -> Callable[[Factory], Factory]: ...
@overload
def register_model(name: str, factory: Factory | EmbeddingModel, *,
                   spec: ModelSpec | None = None, card: ModelCard | None = None,
                   overwrite: bool = False) -> Factory: ...


def register_model(
    name: str,
    factory: Factory | EmbeddingModel | None = None,
    *,
    spec: ModelSpec | None = None,
    card: ModelCard | None = None,
    overwrite: bool = False,
) -> Any:
    """Register a model under ``name``.

    Use as a decorator on a factory ``fn(weights=None, **overrides) -> EmbeddingModel``,
    or call it with a factory or a ready model (e.g. from :func:`xsky.models.wrap`).

    Parameters
    ----------
    name
        Registry name, e.g. ``"my-unet"``.
    factory
        Factory function, or an :class:`EmbeddingModel` instance.
    spec
        The default spec shown by ``get_model_spec`` without building the model.
    card
        The :class:`~xsky.models.card.ModelCard` (licence, paper, weight files, ...) shown by
        :func:`get_model_card`; by default a minimal card derived from the spec.
    overwrite
        Replace an existing entry instead of raising.

    Examples
    --------
    >>> import torch, xsky.models as xm
    >>> net = torch.nn.Conv2d(4, 8, kernel_size=4, stride=4)
    >>> m = xm.wrap(net, bands=["B02", "B03", "B04", "B08"], window=16, stride=4, feature_dim=8)
    >>> _ = xm.register_model("my-conv", m, overwrite=True)
    >>> "my-conv" in xm.list_models("my-*")
    True
    """
    if not isinstance(name, str) or not name:
        raise ArgumentError(f"model name must be a non-empty string, got {name!r}")

    def _register(fn: Factory | EmbeddingModel) -> Factory:
        if isinstance(fn, EmbeddingModel):
            model = fn
            default_spec = spec or model.spec.replace(name=name)
            model.spec = default_spec
            # the runtime rebuilds it by name: create_model(name) returns this instance
            model.set_ref(name, sha256=model.weights_sha256)

            def _instance_factory(weights: Any = None, **overrides: Any) -> EmbeddingModel:
                if weights is not None or overrides:
                    raise ArgumentError(
                        f"model {name!r} was registered as a ready instance; it takes no "
                        "weights or overrides. Register a factory function to allow them."
                    )
                return model

            factory_fn: Factory = _instance_factory
        elif callable(fn):
            factory_fn = fn
            default_spec = spec  # type: ignore[assignment]
        else:
            raise ArgumentError(
                f"register_model({name!r}, ...) needs a factory function or an EmbeddingModel, "
                f"got {type(fn).__name__}"
            )
        if card is not None and not isinstance(card, ModelCard):
            raise ArgumentError(
                f"register_model({name!r}, card=...) needs an xsky.models.ModelCard, got "
                f"{type(card).__name__}"
            )
        if card is not None and card.name != name:
            raise ArgumentError(
                f"register_model({name!r}, card=...): the card is for {card.name!r}; build it "
                f"for {name!r}"
            )
        with _LOCK:
            if name in _REGISTRY and not overwrite and _REGISTRY[name].factory is not factory_fn:
                raise ArgumentError(
                    f"a model named {name!r} is already registered; pick another name or pass "
                    "overwrite=True"
                )
            _REGISTRY[name] = _Entry(name, factory_fn, default_spec, card)
        return fn if not isinstance(fn, EmbeddingModel) else factory_fn

    if factory is None:
        return _register
    return _register(factory)


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a glob ``pattern`` (e.g. ``"skysense-*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.lower() in n or n in name.lower()]
        hint = f" Did you mean {format_choices(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Registered models: {format_choices(_REGISTRY)}. "
            "Register your own with xsky.models.register_model."
        ) from None


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a registered model, without building it."""
    entry = _entry(name)
    if entry.spec is not None:
        return entry.spec
    return create_model(name).spec


def get_model_card(name: str) -> ModelCard:
    """The model card of a registered model: inputs, sizes, weight files, licence, paper.

    Models registered without a card get a minimal one derived from their spec (its
    licence and description are then empty).

    Examples
    --------
    >>> import xsky.models as xm
    >>> card = xm.get_model_card("satclip-resnet18-l10")
    >>> card.license, card.weights[0].name
    ('MIT', 'satclip-resnet18-l10.ckpt')
    """
    entry = _entry(name)
    if entry.card is not None:
        return entry.card
    spec = get_model_spec(name)
    meta = spec.metadata
    return ModelCard.from_spec(spec, name=name, license=str(meta.get("license", "")),
                               paper=meta.get("paper"),
                               description=str(meta.get("description", "")))


def _factory_options(factory: Factory) -> tuple[tuple[str, ...], bool]:
    """The keyword options a factory names, and whether it also takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or other callable without a signature
        return (), True
    names = tuple(p.name for p in params if p.name != "weights" and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def model_options(name: str) -> tuple[str, ...]:
    """The options ``create_model(name, weights, **options)`` accepts, from its factory's
    signature (a factory that only takes ``**kwargs`` lists none).

    Examples
    --------
    >>> import xsky.models as xm
    >>> xm.model_options("test-tiny")
    ('feature_dim', 'stride', 'trust', 'window')
    """
    return tuple(sorted(_factory_options(_entry(name).factory)[0]))


def _unknown_option_error(name: str, unknown: Any, valid: Any) -> ArgumentError:
    listed = f"valid options: {format_choices(valid)}" if valid else "it takes no options"
    return ArgumentError(
        f"model {name!r} has no option(s) {format_choices(unknown)}; {listed} "
        f"(see xsky.models.model_options({name!r}) and get_model_card({name!r}))"
    )


def create_model(
    name: str, weights: str | os.PathLike[str] | None = None, **overrides: Any
) -> EmbeddingModel:
    """Build a registered model, in eval mode, ready for :func:`xsky.embed`.

    Parameters
    ----------
    name
        Registry name; see :func:`list_models`.
    weights
        Path to a local weights file (or directory, for models split over files), or
        ``"download"``: fetch the files from the model card's pinned URLs into the weights
        cache (:func:`xsky.models.weights_cache_dir`), checked against the card's sha256.
        Without weights, a verified earlier download is used if there is one; otherwise the
        model gets a deterministic initialisation seeded from its name, so every process
        builds the same model.
    **overrides
        Model-specific options (e.g. ``window``, ``stride``); :func:`model_options` lists
        them.

    Returns
    -------
    EmbeddingModel

    Raises
    ------
    ArgumentError
        An option the model does not take (the message lists the valid ones).
    CheckpointError
        The weights are missing, no checkpoint, or do not fit the model.
    """
    if not isinstance(name, str):
        raise ArgumentError(f"model name must be a string, got {type(name).__name__}")
    entry = _entry(name)
    valid, takes_any = _factory_options(entry.factory)
    unknown = [k for k in overrides if k not in valid]
    if unknown and not takes_any:
        raise _unknown_option_error(name, unknown, valid)
    wpath: str | None = None
    if isinstance(weights, str) and weights == "download":
        weights = download_weights(name)
    elif weights is None and entry.card is not None:
        from ._download import cached_weights

        weights = cached_weights(entry.card)  # a verified earlier download, if any
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.exists():
            raise CheckpointError(
                f"weights {str(p)!r} for model {name!r} do not exist; pass a local file or "
                "directory"
            )
        wpath = str(p.resolve())
    digest: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    if wpath is not None:
        # digests first, then the factory reads only files with these digests: the reference
        # records exactly the bytes this model was built from
        digest, files = _weights_digest(wpath)
    pins = pin_unless_pinned(files) if wpath is not None else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), pins:
        torch.manual_seed(zlib.crc32(name.encode()))
        try:
            model = entry.factory(weights=wpath, **overrides)
        except TypeError as err:
            # a factory that forwards **kwargs to code that refuses one of them
            bad = [k for k in overrides if f"argument '{k}'" in str(err)]
            if not bad or "unexpected keyword" not in str(err):
                raise
            raise _unknown_option_error(name, bad, valid) from err
    if not isinstance(model, EmbeddingModel):
        raise ModelError(
            f"factory of model {name!r} returned {type(model).__name__}, not an EmbeddingModel"
        )
    model.eval()
    if getattr(model, "ref", None) is not None and model.ref.name == name and not overrides \
            and wpath is None:
        return model
    if model.spec.name != name:
        model.spec = model.spec.replace(name=name)
    # the digest stays the weights' own: options go into ModelRef.variant (the cache key)
    model.set_ref(name, wpath, overrides, sha256=digest)
    if files:
        model.ref = dataclasses.replace(model.ref, files=files)
    return model


def download_weights(name: str | ModelCard, *, cache_dir: str | os.PathLike[str] | None = None,
                     timeout: float = 60.0) -> Path:
    """Download a model's weight files from its card's pinned URLs into the weights cache,
    checked against the card's sha256 (done once: a verified copy is reused).

    Parameters
    ----------
    name
        A registered model name (or its :class:`ModelCard`).
    cache_dir
        Cache root (default :func:`xsky.models.weights_cache_dir`: ``$XSKY_WEIGHTS_DIR``,
        else ``~/.cache/xsky/weights``).
    timeout
        Seconds to wait for the server.

    Returns
    -------
    pathlib.Path
        The folder holding the files; ``create_model(name)`` then finds it by itself.

    Raises
    ------
    CheckpointError
        The card pins no URL or digest, the download failed, or a digest differs (the
        partial file is removed).

    Examples
    --------
    >>> import xsky.models as xm
    >>> folder = xm.download_weights("galileo-nano")  # doctest: +SKIP
    >>> model = xm.create_model("galileo-nano", weights=folder)  # doctest: +SKIP
    """
    from ._download import fetch_weights

    card = name if isinstance(name, ModelCard) else get_model_card(name)
    return fetch_weights(card, cache_dir=cache_dir, timeout=timeout)


def _weights_digest(path: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The digest of a weights file (or of a directory's files) and each file's sha256."""
    p = Path(path)
    paths = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    files = []
    for f in paths:
        st = f.stat()
        key = (str(f), st.st_size, st.st_mtime_ns)
        if key not in _FILE_DIGESTS:
            _FILE_DIGESTS[key] = file_sha256(f)
        files.append((str(f.resolve()), _FILE_DIGESTS[key]))
    if len(files) == 1:
        return files[0][1], tuple(files)
    import hashlib

    return hashlib.sha256("".join(d for _, d in files).encode()).hexdigest(), tuple(files)
