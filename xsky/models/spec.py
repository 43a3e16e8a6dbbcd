"""Model contract: frozen, hashable specs that describe what a model consumes and produces.

A :class:`ModelSpec` is everything the engine needs to plan windows, normalise inputs and
shape the output, without touching weights. It is small and deterministic, so it can travel
in a dask graph and key caches.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..exceptions import ArgumentError
from ..modalities import UNITS

__all__ = ["LocationRef", "ModalitySpec", "ModelRef", "ModelSpec"]

Units = Literal["reflectance", "dn", "db", "linear", "rgb255", "native"]
_UNITS = tuple(sorted(set(UNITS.values())))


@dataclass(frozen=True)
class ModalitySpec:
    """What a model expects of one input modality.

    Parameters
    ----------
    name
        Modality key: ``"s2"``, ``"s1"`` or ``"hr"`` (or any user name).
    bands
        Canonical band names, in the order the model takes them.
    mean, std
        Per-band normalisation ``(x - mean) / std``, applied in ``units``.
    units
        Physical units ``mean``/``std`` are expressed in: ``"reflectance"`` (0-1),
        ``"dn"`` (reflectance x 10 000), ``"db"`` (backscatter in decibels),
        ``"linear"`` (linear backscatter) or ``"rgb255"`` (8-bit colour).
    grid_factor
        Pixels of this modality per pixel of the reference (output) grid along each axis;
        SkySense HR imagery is 32x finer than Sentinel-2.
    partial
        ``True`` if any non-empty subset of ``bands`` may be given: absent bands reach the
        model as missing (needs a model with ``band_mask``); ``False``: all are required.
    """

    name: str
    bands: tuple[str, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    units: Units = "reflectance"
    grid_factor: int = 1
    partial: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(self.bands))
        if not self.bands:
            raise ArgumentError(f"modality {self.name!r} lists no bands")
        for attr in ("mean", "std"):
            val = getattr(self, attr)
            if val is not None:
                val = tuple(float(v) for v in val)
                if len(val) != len(self.bands):
                    raise ArgumentError(
                        f"modality {self.name!r}: {attr} has {len(val)} values for "
                        f"{len(self.bands)} bands {self.bands}; give one value per band"
                    )
                object.__setattr__(self, attr, val)
        if (self.mean is None) != (self.std is None):
            raise ArgumentError(f"modality {self.name!r}: give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ArgumentError(f"modality {self.name!r}: std must be positive, got {self.std}")
        if self.units not in _UNITS:
            raise ArgumentError(
                f"modality {self.name!r}: unknown units {self.units!r}; choose one of {_UNITS}"
            )
        if int(self.grid_factor) != self.grid_factor or self.grid_factor < 1:
            raise ArgumentError(
                f"modality {self.name!r}: grid_factor must be a positive integer, "
                f"got {self.grid_factor!r}"
            )


@dataclass(frozen=True)
class ModelSpec:
    """The contract between a model and the embedding engine.

    Parameters
    ----------
    name
        Registry name (``"test-tiny"``, ``"skysense-huge"``, ...).
    modalities
        Inputs the model can take; the first is the reference grid of the output.
    window
        Input tile size in reference-grid pixels (square).
    stride
        Output stride relative to the reference grid: a window of ``window`` pixels gives
        ``window // stride`` output pixels per axis (``output="dense"``), or one vector
        (``output="pooled"``).
    feature_dim
        Length of the embedding vector.
    fuses_time
        ``True`` if the model consumes all dates of a pixel at once (output has no time
        axis); ``False`` for per-date models (output keeps ``time``).
    output
        ``"dense"``: a feature map per window; ``"pooled"``: one vector per window.
    dtype
        Output dtype.
    default_batch_size
        Windows per forward pass when ``batch_size=None``.
    required_modalities
        Modalities that must be present; by default only the first; ``()``: any one of them.
    band_mask
        ``True``: the model gets per-band validity (``inputs[m + "_band_valid"]``) and the
        valid bands of a pixel even where another of its bands is missing; ``False``: a pixel
        is valid only where all its bands are.
    location
        ``"window"``: the model gets the (lat, lon) of each window's centre as
        ``inputs["latlon"]``; ``"pixel"``: of every pixel; ``None``: no location.
    max_timesteps
        Most dates a time-fusing model takes; more raise an error that says to composite.
    shared_time
        ``True`` if all modalities must share one time axis (one token per date).
    meta
        Model-card facts (licence, paper, weight files, ...); informative only.
    """

    name: str
    modalities: tuple[ModalitySpec, ...]
    window: int
    stride: int
    feature_dim: int
    fuses_time: bool = False
    output: Literal["dense", "pooled"] = "dense"
    dtype: str = "float32"
    default_batch_size: int = 32
    required_modalities: tuple[str, ...] | None = None
    band_mask: bool = False
    location: Literal["window", "pixel"] | None = None
    max_timesteps: int | None = None
    shared_time: bool = False
    meta: Any = field(default=(), compare=False)  # a mapping, stored as sorted items

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if isinstance(self.meta, Mapping):
            object.__setattr__(self, "meta", tuple(sorted(self.meta.items())))
        if not self.modalities:
            raise ArgumentError(f"model {self.name!r} declares no modalities")
        for attr in ("window", "stride", "feature_dim", "default_batch_size"):
            val = getattr(self, attr)
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ArgumentError(
                    f"model {self.name!r}: {attr} must be a positive integer, got {val!r}"
                )
        if self.output not in ("dense", "pooled"):
            raise ArgumentError(
                f"model {self.name!r}: output must be 'dense' or 'pooled', got {self.output!r}"
            )
        if self.output == "dense" and self.window % self.stride:
            raise ArgumentError(
                f"model {self.name!r}: window {self.window} is not a multiple of stride "
                f"{self.stride}; a dense model must map a window to window/stride pixels"
            )
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ArgumentError(f"model {self.name!r}: duplicate modality names {names}")
        if self.location not in (None, "window", "pixel"):
            raise ArgumentError(
                f"model {self.name!r}: location must be None, 'window' or 'pixel', got "
                f"{self.location!r}"
            )
        if self.max_timesteps is not None and (
                not isinstance(self.max_timesteps, int) or self.max_timesteps < 1):
            raise ArgumentError(
                f"model {self.name!r}: max_timesteps must be a positive integer or None, got "
                f"{self.max_timesteps!r}"
            )
        partial = [m.name for m in self.modalities if m.partial]
        if partial and not self.band_mask:
            raise ArgumentError(
                f"model {self.name!r}: modalities {partial} take partial bands, which only a "
                "model with band_mask=True can tell apart from missing data"
            )
        req = self.required_modalities
        if req is None:
            req = (names[0],)
        req = tuple(req)
        unknown = set(req) - set(names)
        if unknown:
            raise ArgumentError(f"model {self.name!r}: required modalities {unknown} not in {names}")
        object.__setattr__(self, "required_modalities", req)

    # -- helpers ---------------------------------------------------------------------
    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise ArgumentError(
            f"model {self.name!r} has no modality {name!r}; it takes {self.modality_names}"
        )

    @property
    def bands(self) -> tuple[str, ...]:
        """Bands of the reference (first) modality."""
        return self.modalities[0].bands

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.meta)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("xsky.ModelSpec", dataclasses.astuple(self)[:-1])


@dataclass(frozen=True)
class ModelRef:
    """A small, picklable recipe to get a model in any process.

    Attributes
    ----------
    name
        Registry name, or ``None`` for a model that is only in this process's cache
        (a wrapped module that was never registered).
    weights
        Local weights path given to ``create_model``, if any.
    overrides
        Keyword overrides given to ``create_model``, as sorted items.
    sha256
        Digest of the weights: a check that a worker rebuilt the same model.
    spec
        The model's spec.
    files
        ``(resolved path, sha256)`` of every weights file read where the graph was built:
        a process that rebuilds the model checks each file's bytes against it before
        reading it (so a file swapped after the graph was built is never unpickled).
    """

    name: str | None
    weights: str | None
    overrides: tuple[tuple[str, Any], ...]
    sha256: str
    spec: ModelSpec
    files: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def variant(self) -> str:
        """Digest of the spec and the overrides: models with the same weights but other
        options (``window=``, ``stride=``, ...) compute other things."""
        spec = dataclasses.astuple(self.spec)[:-1]  # without the informative meta
        text = repr((spec, self.overrides))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def key(self) -> tuple[str, str, str]:
        """Cache key: the spec name, the weights digest and :attr:`variant`."""
        return (self.spec.name, self.sha256, self.variant)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("xsky.ModelRef", self.name, self.weights, self.overrides, self.sha256,
                self.variant)


@dataclass(frozen=True)
class LocationRef:
    """A small, picklable recipe to get a location encoder in any process.

    What a dask task carries instead of the encoder's weights (the location counterpart of
    :class:`ModelRef`).

    Attributes
    ----------
    sha256
        Digest of the encoder's weights and harmonics convention: the cache key.
    path
        Checkpoint to load it from in a process that has not cached it, or ``None`` for an
        in-memory encoder that exists only where it was registered.
    trust
        Whether that checkpoint may be fully unpickled.
    name
        Model name recorded in the output's attrs.
    legendre_polys, embed_dim
        Sizes (for shapes, without loading).
    file_sha256
        Digest of the checkpoint file, if any.
    """

    sha256: str
    path: str | None
    trust: bool
    name: str
    legendre_polys: int
    embed_dim: int
    file_sha256: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Cache key: one entry per encoder digest, whatever its name or file."""
        return ("location", self.sha256)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("xsky.LocationRef", self.sha256, self.path, self.trust)
