"""Exporting embeddings for other tools: GeoTIFF, STAC metadata, model cards, int8 stores.

The writers and the store metadata live in :mod:`xsky.io` (:mod:`xsky.io.raster`,
:mod:`xsky.io.conventions`) and are re-exported here; :func:`model_card` needs the model
registry, so it lives at this level: it describes a registered model (or a model
instance) as a STAC Item with the `Machine Learning Model (MLM) extension
<https://github.com/stac-extensions/mlm>`_ v1.4.0, which the ``emb:model`` link of
:func:`stac_item` points to.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from typing import Any

from ..io.conventions import dequantize, quantize, stac_item, store_dataset
from ..io.raster import to_raster
from ..modalities import get as _modality

__all__ = [
    "MLM_EXTENSION",
    "dequantize",
    "model_card",
    "quantize",
    "stac_item",
    "store_dataset",
    "to_raster",
]

MLM_EXTENSION = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
SCIENTIFIC_EXTENSION = "https://stac-extensions.github.io/scientific/v1.0.0/schema.json"
FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
#: where the code that builds every registered model is (``project.urls`` of the package)
SOURCE_CODE = "https://github.com/xsky-dev/xsky"

# MLM wants a common architecture name; the card's own description goes to hyperparameters
_ARCHITECTURES = {
    "galileo": "Vision Transformer",
    "presto": "Transformer",
    "skysense": "Swin Transformer V2 + Vision Transformer",
    "xsky": "Vision Transformer",
    "test": "CNN",
}
_SPDX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")
_WORLD = {"type": "Polygon",
          "coordinates": [[[-180.0, -90.0], [180.0, -90.0], [180.0, 90.0], [-180.0, 90.0],
                           [-180.0, -90.0]]]}


def _architecture(card: Any) -> str:
    extra = dict(card.extra)
    text = str(extra.get("architecture", "")).lower()
    if "resnet" in text:
        return "ResNet"
    if "vit" in text:
        return "Vision Transformer"
    return _ARCHITECTURES.get(card.family, "unknown")


def _resolve(model: Any) -> tuple[Any, Any, int | None, bool]:
    """``(card, spec or None, total parameters or None, whether the card is the registry's
    or one given)`` of a name, card or model."""
    from ..models import ModelCard

    if isinstance(model, ModelCard):
        return model, None, None, True
    if isinstance(model, str):
        from ..models import get_model_card, get_model_spec

        return get_model_card(model), get_model_spec(model), None, True
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(model, "parameters"):
        from ..exceptions import ArgumentError

        raise ArgumentError(
            "model must be a registered model name (see xsky.models.list_models()), an "
            f"xsky.models.EmbeddingModel or a ModelCard, got {type(model).__name__}"
        )
    from ..models import get_model_card, list_models

    base = get_model_card(spec.name) if spec.name in list_models() else None
    facts: dict[str, Any] = {}
    if base is not None:
        facts = {"weights": base.weights, "license": base.license, "paper": base.paper,
                 "description": base.description, "family": base.family, "extra": base.extra}
    # the instance's own sizes (a window or stride override) win over the registered card
    card = ModelCard.from_spec(spec, name=spec.name, **facts)
    total = int(sum(p.numel() for p in model.parameters()))
    return card, spec, total, base is not None


def _input(m: Any, card: Any) -> dict[str, Any]:
    size = card.window * m.grid_factor
    static = False
    try:
        static = _modality(m.name).static
    except Exception:  # a modality xsky's table does not know: treated as dated
        static = False
    if card.fuses_time and not static:
        shape, dims = [-1, -1, len(m.bands), size, size], ["batch", "time", "channel",
                                                           "height", "width"]
    else:
        shape, dims = [-1, len(m.bands), size, size], ["batch", "channel", "height", "width"]
    scaling = None
    if m.mean is not None and m.std is not None:
        scaling = [{"type": "z-score", "mean": float(mu), "stddev": float(sd)}
                   for mu, sd in zip(m.mean, m.std, strict=True)]
    return {
        "name": m.name,
        "bands": list(m.bands),
        "input": {"shape": shape, "dim_order": dims, "data_type": "float32"},
        "description": (f"modality {m.name!r}, values in {m.units!r} (xsky converts the "
                        f"input's units to these), on a grid {m.grid_factor}x finer than the "
                        "output's reference grid" if m.grid_factor > 1 else
                        f"modality {m.name!r}, values in {m.units!r} (xsky converts the "
                        "input's units to these)"),
        "value_scaling": scaling,
        "resize_type": None,
        "pre_processing_function": None,
    }


def _output(card: Any) -> dict[str, Any]:
    if card.output == "pooled":
        shape, dims = [-1, card.feature_dim], ["batch", "channel"]
        what = "one vector per window"
    else:
        per = max(1, card.window // card.stride)
        shape, dims = [-1, card.feature_dim, per, per], ["batch", "channel", "height", "width"]
        what = f"a feature map per window, one vector per {card.stride} x {card.stride} pixels"
    return {
        "name": "embedding",
        "tasks": ["similarity-search"],
        "result": {"shape": shape, "dim_order": dims, "data_type": "float32"},
        "description": f"{card.feature_dim}-d embeddings: {what}"
                       + (", the dates fused" if card.fuses_time else ", one per date"),
        "post_processing_function": None,
    }


def _weight_asset(w: Any) -> dict[str, Any]:
    name = str(w.name)
    asset: dict[str, Any] = {"href": w.url or name, "title": name}
    if name.endswith((".json", ".yaml", ".yml", ".toml")):  # a config the weights need
        asset["type"] = "application/json" if name.endswith(".json") else "text/plain"
        asset["roles"] = ["mlm:model", "metadata"]
    else:
        safetensors = name.endswith(".safetensors")
        asset["type"] = "application/octet-stream; framework=pytorch" + (
            "; profile=safetensors" if safetensors else "")
        asset["roles"] = ["mlm:model", "mlm:weights", "weights", "data"]
        asset["mlm:artifact_type"] = "safetensors" if safetensors else "torch.save"
    if w.sha256:
        asset["file:checksum"] = "1220" + str(w.sha256)  # multihash: sha2-256, 32 bytes
    if not w.url:
        asset["description"] = f"not downloadable from a pinned URL: {w.source}" if w.source \
            else "supply the file locally"
    elif w.source:
        asset["description"] = str(w.source)
    return asset


def model_card(model: Any) -> dict[str, Any]:
    """A model's card as a STAC Item with the MLM extension (a plain dict).

    Fields: ``mlm:name``, ``mlm:architecture``, ``mlm:tasks`` (``similarity-search``),
    ``mlm:framework`` (PyTorch), ``mlm:pretrained``, ``mlm:batch_size_suggestion``,
    ``mlm:accelerator`` (none required), ``mlm:input`` (per modality: bands, input shape and
    dims, z-score ``value_scaling`` with the model's mean/std, or null where the model
    normalises itself), ``mlm:output`` (the embedding's shape), ``mlm:hyperparameters``
    (window, stride, output kind, time fusion and the card's family facts), and for a model
    instance ``mlm:total_parameters``; ``sci:citation`` (the paper), ``license`` (SPDX, or
    ``other`` with the licence text in the description); an ``mlm:model`` asset per weight
    file (pinned URL or file name, ``file:checksum`` from the card's sha256) and the source
    code asset. As MLM's best practices suggest, ``geometry``/``start_datetime`` are the
    context the model may be applied in: the world, from 1900.

    Parameters
    ----------
    model
        A registered name, an :class:`~xsky.models.EmbeddingModel` (its own window/stride
        overrides are described) or a :class:`~xsky.models.ModelCard`.

    Returns
    -------
    dict
        A STAC 1.1 Item; ``pystac.Item.from_dict`` and pystac's MLM extension read it.

    Examples
    --------
    >>> from xsky.api.export import model_card
    >>> card = model_card("galileo-nano")
    >>> card["properties"]["mlm:name"], card["properties"]["mlm:input"][0]["bands"][:3]
    ('galileo-nano', ['B02', 'B03', 'B04'])
    """
    card, spec, total, known = _resolve(model)
    license_text = str(card.license or "")
    spdx = license_text if _SPDX.match(license_text) else "other"
    description = card.description or f"xsky model {card.name!r}"
    if spdx == "other" and license_text:
        description = f"{description}. Licence: {license_text}"
    pretrained = bool(card.weights)
    hyper: dict[str, Any] = {"window": card.window, "stride": card.stride,
                             "output": card.output, "fuses_time": card.fuses_time,
                             "feature_dim": card.feature_dim}
    for key, value in card.extra:
        if re.match(r"^[0-9a-zA-Z_.-]+$", str(key)):
            hyper[str(key)] = value if isinstance(value, str | int | float | bool) else str(value)
    props: dict[str, Any] = {
        "title": card.name,
        "description": description,
        "datetime": None,
        "start_datetime": "1900-01-01T00:00:00Z",
        "end_datetime": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "license": spdx,
        "mlm:name": card.name,
        "mlm:architecture": _architecture(card),
        "mlm:tasks": ["similarity-search"],
        "mlm:framework": "PyTorch",
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:input": [_input(m, card) for m in card.modalities],
        "mlm:output": [_output(card)],
        "mlm:hyperparameters": hyper,
    }
    if known:  # an unregistered model instance: whether it was pretrained is not known
        props["mlm:pretrained"] = pretrained
        if not pretrained:
            props["mlm:pretrained_source"] = None  # MLM: explicit null when not pretrained
    if spec is not None:
        props["mlm:batch_size_suggestion"] = int(spec.default_batch_size)
    if total is not None:
        props["mlm:total_parameters"] = total
    extensions = [MLM_EXTENSION]
    if card.paper:
        props["sci:citation"] = str(card.paper)
        extensions.append(SCIENTIFIC_EXTENSION)
    assets: dict[str, Any] = {}
    for w in card.weights:
        key = os.path.splitext(str(w.name))[0] if len(card.weights) > 1 else "model"
        assets[key] = _weight_asset(w)
    if any("file:checksum" in a for a in assets.values()):
        extensions.append(FILE_EXTENSION)
    source: dict[str, Any] = {
        "href": SOURCE_CODE,
        "title": "xsky",
        "type": "text/html",
        "roles": ["mlm:source_code", "code", "metadata"],
        "description": f"built by xsky.models.create_model({card.name!r}, weights=...)",
        "mlm:entrypoint": "xsky.models:create_model",
    }
    if not assets:  # no weight files (a fixed-seed or random initialisation): the code is it
        source["roles"] = ["mlm:model", *source["roles"]]
    assets["source_code"] = source
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": extensions,
        "id": card.name,
        "geometry": _WORLD,
        "bbox": [-180.0, -90.0, 180.0, 90.0],
        "properties": props,
        "links": [],
        "assets": assets,
    }
