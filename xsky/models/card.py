"""Typed model cards (timm ``PretrainedCfg`` / torchgeo ``Weights.meta``), without torch.

A :class:`ModelCard` records, per registered name, what a user needs to know before using a
model: its inputs (modalities, bands, normalisation) and sizes (taken from the
:class:`~xsky.models.ModelSpec`), the weight files it loads (:class:`WeightFile`: name,
sha256, a source URL pinned to a release or commit), its licence, paper and a description.

Examples
--------
>>> import xsky.models as xm
>>> card = xm.get_model_card("test-tiny")
>>> card.bands, card.window, card.stride, card.feature_dim
(('B02', 'B03', 'B04', 'B08'), 16, 4, 16)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..exceptions import ArgumentError
from .spec import ModalitySpec, ModelSpec

__all__ = ["MOVING_REVISIONS", "ModelCard", "WeightFile"]

#: URL path parts that name a moving branch rather than a fixed revision.
MOVING_REVISIONS = ("/main/", "/master/", "/latest/", "/HEAD/", "/head/")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WeightFile:
    """One weight file a model loads.

    Parameters
    ----------
    name
        File name (``"satclip-resnet18-l10.ckpt"``).
    sha256
        Hex SHA-256 of the file, or ``None`` when it is not known (shown as ``'unknown'``).
    url
        Download URL pinned to a release or commit, or ``None`` when no pinned URL is known.
        A URL on a moving branch (``/main/``, ``/master/``) is refused.
    source
        Where the file comes from, in words. Required when ``url`` is ``None``: it must say
        why there is no pinned URL (e.g. "pinned revision not known offline").
    """

    name: str
    sha256: str | None = None
    url: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ArgumentError(f"a weight file needs a non-empty file name, got {self.name!r}")
        if self.sha256 is not None:
            digest = str(self.sha256).lower()
            if not _SHA256.match(digest):
                raise ArgumentError(
                    f"weight file {self.name!r}: sha256 must be 64 hex digits or None "
                    f"(unknown), got {self.sha256!r}"
                )
            object.__setattr__(self, "sha256", digest)
        if self.url is not None:
            moving = [m for m in MOVING_REVISIONS if m in self.url]
            if moving:
                raise ArgumentError(
                    f"weight file {self.name!r}: URL {self.url!r} is on a moving branch "
                    f"({moving[0]!r}); pin it to a release or commit, or give url=None and "
                    "say in source= that the pinned revision is not known"
                )
        elif not self.source:
            raise ArgumentError(
                f"weight file {self.name!r} has no pinned URL; say where it comes from and why "
                "it is not pinned in source="
            )

    @property
    def pinned(self) -> bool:
        """Whether the card gives a URL pinned to a fixed revision."""
        return self.url is not None

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256 or "unknown",
                "url": self.url or "unknown (not pinned)", "source": self.source}


@dataclass(frozen=True)
class ModelCard:
    """What a registered model is, takes and loads.

    Build one from a spec with :meth:`from_spec`; sizes and inputs are then copied from it.

    Attributes
    ----------
    name
        Registry name.
    modalities
        Input modalities (bands, normalisation, units, grid factor), as in the spec.
    window, stride, feature_dim, output, fuses_time
        Sizes and output kind, as in the spec.
    weights
        Weight files the model loads (empty for models without released weights).
    license
        Licence of the weights (and of the code, if different).
    paper
        Citation, or ``None``.
    description
        One or two sentences.
    family
        Model family (``"skysense"``, ``"satclip"``, ...).
    extra
        Further family-specific facts, as sorted ``(key, value)`` items.
    """

    name: str
    modalities: tuple[ModalitySpec, ...]
    window: int
    stride: int
    feature_dim: int
    output: str = "dense"
    fuses_time: bool = False
    weights: tuple[WeightFile, ...] = ()
    license: str = ""
    paper: str | None = None
    description: str = ""
    family: str = ""
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "weights", tuple(self.weights))
        if isinstance(self.extra, Mapping):
            object.__setattr__(self, "extra", tuple(sorted(self.extra.items())))
        for w in self.weights:
            if not isinstance(w, WeightFile):
                raise ArgumentError(
                    f"model card {self.name!r}: weights must be WeightFile records, got "
                    f"{type(w).__name__}"
                )

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, name: str | None = None, **facts: Any) -> ModelCard:
        """A card whose inputs and sizes are those of ``spec``; ``facts`` fill the rest."""
        return cls(name=name or spec.name, modalities=spec.modalities, window=spec.window,
                   stride=spec.stride, feature_dim=spec.feature_dim, output=spec.output,
                   fuses_time=spec.fuses_time, **facts)

    # -- views -----------------------------------------------------------------------
    @property
    def licence(self) -> str:
        """British spelling of :attr:`license`."""
        return self.license

    @property
    def bands(self) -> tuple[str, ...]:
        """Bands of the reference (first) modality."""
        return self.modalities[0].bands

    @property
    def normalisation(self) -> dict[str, dict[str, Any]]:
        """Per modality: ``mean``, ``std`` (or ``None``) and the ``units`` they are in."""
        return {m.name: {"bands": m.bands, "mean": m.mean, "std": m.std, "units": m.units}
                for m in self.modalities}

    def weight_file(self, filename: str) -> WeightFile | None:
        """The entry for a file name, if the card lists it."""
        return next((w for w in self.weights if w.name == filename), None)

    def expected_sha256(self, path: Any) -> str | None:
        """The card's sha256 of the weights file at ``path`` (matched by file name), if known."""
        import os

        entry = self.weight_file(os.path.basename(os.fspath(path)))
        return entry.sha256 if entry is not None else None

    def metadata(self) -> dict[str, Any]:
        """The card's facts as a plain dict (what ``ModelSpec.meta`` holds)."""
        out: dict[str, Any] = {
            "description": self.description,
            "license": self.license,
        }
        if self.paper:
            out["paper"] = self.paper
        if self.family:
            out["family"] = self.family
        if self.weights:
            out["weight_files"] = tuple(w.name for w in self.weights)
        out.update(dict(self.extra))
        return out
