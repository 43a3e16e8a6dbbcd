"""SatCLIP: the location encoder and the Sentinel-2 image encoders, with official checkpoints.

SatCLIP (Klemmer et al., 2023) trains a location encoder (spherical harmonics followed by a
SIREN) and a Sentinel-2 image encoder contrastively. Both halves live in one PyTorch-Lightning
``.ckpt`` per released model (``microsoft/SatCLIP-{ResNet18,ResNet50,ViT16}-{L10,L40}`` on
Hugging Face):

* ``state_dict["model.nnet.*"]`` and its alias ``model.location.nnet.*``: the float64 SIREN;
* ``state_dict["model.visual.*"]``: the timm backbone with a 256-d projection (``fc``/``head``);
* ``hyper_parameters``: sizes (``legendre_polys``, ``capacity``, ``embed_dim``,
  ``num_hidden_layers``, ``vision_layers``, ...).

:class:`LocationEncoder` maps ``(lon, lat)`` in degrees to the location embedding exactly as the
official code does (see :mod:`xsky.models._sh` for the spherical-harmonic convention).
The image encoders are registered as ``satclip-{resnet18,resnet50,vit16}-{l10,l40}``.

Examples
--------
>>> import torch
>>> from xsky.models.satclip import LocationEncoder
>>> enc = LocationEncoder(legendre_polys=10, capacity=16, embed_dim=8).eval()
>>> enc(torch.tensor([[2.35, 48.85]], dtype=torch.float64)).shape
torch.Size([1, 8])
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ArgumentError, CheckpointError, DimensionError, format_choices
from ._base import EmbeddingModel, state_dict_sha256
from ._checkpoint import LoadReport, apply_state, load_checkpoint, load_checkpoint_and_digest
from ._registry import register_model
from ._resnet import resnet18, resnet50
from ._sh import as_lonlat, spherical_harmonics, spherical_harmonics_torch
from ._vit_timm import vit_small_patch16_224
from .card import ModelCard, WeightFile
from .spec import ModalitySpec, ModelSpec

__all__ = [
    "CARDS",
    "S2_BANDS",
    "SATCLIP_MODELS",
    "SATCLIP_S2_BANDS",
    "LocationEncoder",
    "SatCLIPImageEncoder",
    "SirenNet",
    "SphericalHarmonics",
    "checkpoint_url",
    "default_cache_dir",
    "download_checkpoint",
    "read_location_state",
    "visual_state",
]

#: The model's input: the 12 Sentinel-2 L2A bands of SatCLIP's S2-100K tiles, in file order
#: (no B10).
SATCLIP_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                    "B12")
S2_BANDS = SATCLIP_S2_BANDS  # the former name
#: Channel where the zero B10 goes to reach the 13-band L1C order of the MoCo backbones.
B10_INDEX = 10

_ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": {"builder": resnet18, "window": 256, "vision_layers": "moco_resnet18",
                 "hub": "ResNet18", "head": "fc"},
    "resnet50": {"builder": resnet50, "window": 256, "vision_layers": "moco_resnet50",
                 "hub": "ResNet50", "head": "fc"},
    "vit16": {"builder": vit_small_patch16_224, "window": 224, "vision_layers": "moco_vit16",
              "hub": "ViT16", "head": "head"},
}
#: Registered SatCLIP model names.
SATCLIP_MODELS = tuple(f"satclip-{a}-l{L}" for a in _ARCHS for L in (10, 40))

_PAPER = ("Klemmer et al. (2023), SatCLIP: Global, General-Purpose Location Embeddings with "
          "Satellite Imagery, arXiv:2311.17179")
# What download_checkpoint fetches: the file on the repository's main branch. It is NOT
# pinned (the pinned commit is not known offline), so model cards give no URL for it.
_HUB_URL = "https://huggingface.co/microsoft/SatCLIP-{hub}-L{L}/resolve/main/{file}"


# --------------------------------------------------------------------------------------
# Location encoder
# --------------------------------------------------------------------------------------


class SphericalHarmonics(nn.Module):
    """SatCLIP's spherical-harmonic positional encoding (no parameters).

    Parameters
    ----------
    legendre_polys
        Number of Legendre degrees ``L``; the output has ``L**2`` features.
    harmonics_calculation
        ``"analytic"`` (every released model) or ``"closed-form"``, the official option that
        differs by ``1/pi`` on ``m = 0`` and by the Condon-Shortley sign ``(-1)^m`` elsewhere.
    """

    def __init__(self, legendre_polys: int = 10, harmonics_calculation: str = "analytic") -> None:
        super().__init__()
        if harmonics_calculation not in ("analytic", "closed-form"):
            raise CheckpointError(
                f"harmonics_calculation {harmonics_calculation!r} is not supported; xsky "
                "implements 'analytic' (all released SatCLIP models) and 'closed-form'"
            )
        self.L = int(legendre_polys)
        self.harmonics_calculation = harmonics_calculation
        self.embedding_dim = self.L * self.L
        self._scale: np.ndarray | None = None
        if harmonics_calculation == "closed-form":
            scale = np.empty(self.embedding_dim)
            for l in range(self.L):  # noqa: E741
                for m in range(-l, l + 1):
                    scale[l * l + l + m] = 1 / math.pi if m == 0 else (-1.0) ** abs(m)
            self._scale = scale

    def features(self, lon: Any, lat: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Features of numpy ``lon``/``lat`` (degrees) as a float64 ``(N, L**2)`` array."""
        f = spherical_harmonics(lon, lat, self.L, out=out)
        if self._scale is not None:
            f *= self._scale
        return f

    def forward(self, lonlat: torch.Tensor) -> torch.Tensor:
        if lonlat.ndim != 2 or lonlat.shape[1] != 2:
            raise DimensionError(
                f"location encoder input must have shape (N, 2) ordered (lon, lat) in degrees, "
                f"got {tuple(lonlat.shape)}"
            )
        if lonlat.device.type == "cpu" and not lonlat.requires_grad:
            ll = lonlat.detach().to(torch.float64).numpy()
            return torch.from_numpy(self.features(ll[:, 0], ll[:, 1]))
        f = spherical_harmonics_torch(lonlat, self.L)
        if self._scale is not None:
            f = f * torch.as_tensor(self._scale, device=f.device)
        return f

    def extra_repr(self) -> str:
        return f"L={self.L}, harmonics_calculation={self.harmonics_calculation!r}"


class Siren(nn.Module):
    """One SIREN layer: ``act(w0 * dropout(x W^T + b))``; parameters ``weight`` [out, in], ``bias``."""

    def __init__(self, dim_in: int, dim_out: int, w0: float = 1.0, *, is_first: bool = False,
                 activation: bool = True, dropout: bool = False,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.w0 = float(w0)
        self.activation = activation
        self.dropout = dropout
        # The official initialisation (matters only for training from scratch).
        bound = 1 / dim_in if is_first else math.sqrt(6 / dim_in) / self.w0
        self.weight = nn.Parameter(torch.empty(dim_out, dim_in, dtype=dtype).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(dim_out, dtype=dtype).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.dropout:
            out = F.dropout(out, p=0.5, training=self.training)
        return torch.sin(self.w0 * out) if self.activation else out

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"in={i}, out={o}, w0={self.w0:g}, sine={self.activation}, dropout={self.dropout}"


class SirenNet(nn.Module):
    """SatCLIP's SIREN: ``num_layers`` sine layers (w0 = 30 first, 1 after) and a linear head.

    State-dict keys are the official ``layers.{i}.weight|bias`` and ``last_layer.weight|bias``.
    Dropout (p = 0.5, on the pre-activation of hidden layers) is active only in training mode.
    """

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int, num_layers: int = 2, *,
                 w0: float = 1.0, w0_initial: float = 30.0,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Siren(dim_in if i == 0 else dim_hidden, dim_hidden, w0_initial if i == 0 else w0,
                  is_first=i == 0, dropout=True, dtype=dtype)
            for i in range(num_layers)
        )
        self.last_layer = Siren(dim_hidden, dim_out, w0, activation=False, dtype=dtype)

    @property
    def sine_layers(self) -> list[Siren]:
        """The hidden (sine) layers, typed."""
        return [cast(Siren, lay) for lay in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.last_layer(x)


_REQUIRED_HPARAMS = ("legendre_polys", "capacity", "embed_dim", "num_hidden_layers")


def read_location_state(
    ckpt: Mapping[str, Any], *, source: str = "checkpoint"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Location-encoder hyper-parameters and SIREN tensors from a loaded SatCLIP checkpoint.

    Accepts an official Lightning checkpoint (``state_dict`` + ``hyper_parameters`` + any
    other Lightning entries), or a bare state dict. Tensors are the keys that contain
    ``nnet.``, with everything before it dropped; the ``model.nnet`` and
    ``model.location.nnet`` aliases collapse into one. Sizes come from ``hyper_parameters``
    and are checked against the tensor shapes (or inferred from them when the file has no
    hyper-parameters).

    Returns
    -------
    hparams, state
        ``hparams`` has at least ``legendre_polys``, ``capacity``, ``embed_dim``,
        ``num_hidden_layers``, ``le_type``, ``pe_type`` and ``harmonics_calculation``.
    """
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(ckpt).__name__}, not a dict; expected a SatCLIP Lightning "
            "checkpoint with 'state_dict' and 'hyper_parameters'"
        )
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"'state_dict' of {source} is a {type(sd).__name__}, not a dict")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, val in sd.items():
        if not isinstance(key, str) or "nnet." not in key:
            continue
        alias, _, rest = key.rpartition("nnet.")
        groups.setdefault(alias + "nnet", {})[rest] = val
    if not groups:
        raise CheckpointError(
            f"{source} has no location-encoder tensors (no state_dict keys containing "
            "'nnet.'); is it a SatCLIP checkpoint? Its keys start with "
            f"{format_choices({str(k).split('.')[0] for k in sd}, limit=8)}"
        )
    # Prefer the alias the official loader returns (model.location), then model.nnet.
    order = sorted(groups, key=lambda a: (not a.endswith("location.nnet"), a))
    state = groups[order[0]]
    for other in order[1:]:
        o = groups[other]
        if o.keys() != state.keys() or any(
            o[k].shape != state[k].shape or not torch.equal(o[k], state[k]) for k in state
        ):
            raise CheckpointError(
                f"{source}: the SIREN under {order[0]!r} and under {other!r} differ; official "
                "checkpoints hold the same tensors under both names, so this file was edited"
            )
    hp_raw = ckpt.get("hyper_parameters") if "state_dict" in ckpt else None
    hp = dict(hp_raw) if isinstance(hp_raw, Mapping) else {}
    inferred = _infer_sizes(state, source)
    for key, val in inferred.items():
        if key in hp and hp[key] is not None and _int_hparam(hp, key, source) != val:
            raise CheckpointError(
                f"{source}: hyper_parameters[{key!r}] = {hp[key]!r} but the SIREN tensors imply "
                f"{val}; the file is inconsistent"
            )
        hp.setdefault(key, val)
    hp.setdefault("le_type", "sphericalharmonics")
    hp.setdefault("pe_type", "siren")
    hp.setdefault("harmonics_calculation", "analytic")
    if hp["le_type"] != "sphericalharmonics":
        raise CheckpointError(
            f"{source}: le_type {hp['le_type']!r} is not supported; xsky implements "
            "'sphericalharmonics' (the encoding of every released SatCLIP model)"
        )
    if hp["pe_type"] != "siren":
        raise CheckpointError(
            f"{source}: pe_type {hp['pe_type']!r} is not supported; xsky implements 'siren' "
            "(the network of every released SatCLIP model)"
        )
    for key in _REQUIRED_HPARAMS:
        hp[key] = _int_hparam(hp, key, source)
    return hp, state


def _int_hparam(hp: Mapping[str, Any], key: str, source: str) -> int:
    val = hp[key]
    if isinstance(val, bool) or not isinstance(val, int | float | np.integer | np.floating | str):
        val = None
    try:
        out = int(val) if val is not None and float(val) == int(float(val)) else None
    except (TypeError, ValueError, OverflowError):
        out = None
    if out is None:
        raise CheckpointError(
            f"{source}: hyper_parameters[{key!r}] = {hp[key]!r} is not an integer; the file's "
            "hyper-parameters are broken. Use an official SatCLIP checkpoint, or fix the value "
            "(it must match the SIREN tensors)"
        )
    return out


def _infer_sizes(state: Mapping[str, torch.Tensor], source: str) -> dict[str, int]:
    try:
        w0 = state["layers.0.weight"]
        last = state["last_layer.weight"]
    except KeyError as err:
        raise CheckpointError(
            f"{source}: the SIREN lacks {err.args[0]!r}; found {format_choices(state)}"
        ) from None
    n_layers = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    L = math.isqrt(int(w0.shape[1]))
    if w0.shape[1] != L * L:
        raise CheckpointError(
            f"{source}: layers.0.weight has {w0.shape[1]} inputs, not a square number of "
            "spherical-harmonic features L**2"
        )
    return {"legendre_polys": L, "capacity": int(w0.shape[0]), "embed_dim": int(last.shape[0]),
            "num_hidden_layers": n_layers}


class LocationEncoder(nn.Module):
    """SatCLIP location encoder: spherical harmonics of ``(lon, lat)``, then a SIREN.

    Parameters
    ----------
    legendre_polys
        Number of Legendre degrees ``L`` (10 or 40 for the released models).
    capacity
        Hidden width of the SIREN (512 in the released models).
    embed_dim
        Output width (256 in the released models).
    num_hidden_layers
        Number of sine layers (2 in the released models).
    harmonics_calculation
        ``"analytic"`` (released models) or ``"closed-form"``.
    dtype
        Network dtype. float64, like the official models, reproduces them to ~1e-10;
        float32 is faster but changes outputs by ~1e-7 relative.

    Notes
    -----
    The forward pass maps a ``(N, 2)`` tensor of ``(lon, lat)`` in degrees (float64; float32
    is upcast) to ``(N, embed_dim)`` in the network dtype, the raw (un-normalised) embedding.
    Build from an official file with :meth:`from_checkpoint`, which returns the module in
    eval mode (in train mode dropout makes outputs random, as in the official code).
    :meth:`encode` is the fast batched path for numpy arrays.
    """

    def __init__(self, legendre_polys: int = 10, capacity: int = 512, embed_dim: int = 256,
                 num_hidden_layers: int = 2, *, harmonics_calculation: str = "analytic",
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.posenc = SphericalHarmonics(legendre_polys, harmonics_calculation)
        self.nnet = SirenNet(self.posenc.embedding_dim, capacity, embed_dim, num_hidden_layers,
                             dtype=dtype)
        self.hparams: dict[str, Any] = {
            "legendre_polys": int(legendre_polys), "capacity": int(capacity),
            "embed_dim": int(embed_dim), "num_hidden_layers": int(num_hidden_layers),
            "harmonics_calculation": harmonics_calculation,
            "le_type": "sphericalharmonics", "pe_type": "siren",
        }
        self.source_path: str | None = None
        self.source_sha256: str | None = None
        self._source_state: str | None = None

    # -- properties ------------------------------------------------------------------
    @property
    def legendre_polys(self) -> int:
        """Number of Legendre degrees ``L``."""
        return self.posenc.L

    @property
    def embed_dim(self) -> int:
        """Width of the embedding."""
        return int(self.nnet.last_layer.weight.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.nnet.last_layer.weight.dtype

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, trust: bool = False,
                        dtype: torch.dtype = torch.float64,
                        device: str | torch.device = "cpu") -> LocationEncoder:
        """Load the location encoder of an official SatCLIP ``.ckpt``.

        Parameters
        ----------
        path
            A SatCLIP Lightning checkpoint (or any file whose state dict holds the
            ``model.nnet.*``/``model.location.nnet.*`` tensors).
        trust
            Allow full unpickling if the file cannot be read with ``weights_only=True``;
            only for a file whose origin you trust (unpickling can run code).
        dtype
            Network dtype (float64 reproduces the official model).
        device
            Where to put the network.

        Returns
        -------
        LocationEncoder
            In eval mode, sizes read from the file's ``hyper_parameters``.

        Raises
        ------
        CheckpointError
            The file is missing, unreadable or not a SatCLIP checkpoint.
        UnsafeCheckpointError
            The file needs arbitrary unpickling and ``trust`` is False.
        """
        p = Path(path).expanduser()
        # the digest of the very bytes read: a graph records it, and a worker checks the file
        # against it before reading it
        ckpt, digest = load_checkpoint_and_digest(p, trust=trust)
        enc = cls.from_state(ckpt, dtype=dtype, source=str(p))
        enc.source_path = str(p.resolve())
        enc.source_sha256 = digest
        enc._source_state = state_dict_sha256(enc)
        return enc.to(device)

    @classmethod
    def from_state(cls, ckpt: Mapping[str, Any], *, dtype: torch.dtype = torch.float64,
                   source: str = "checkpoint") -> LocationEncoder:
        """Build from an already loaded checkpoint dict (see :func:`read_location_state`)."""
        hp, state = read_location_state(ckpt, source=source)
        enc = cls(hp["legendre_polys"], hp["capacity"], hp["embed_dim"],
                  hp["num_hidden_layers"], harmonics_calculation=hp["harmonics_calculation"],
                  dtype=dtype)
        enc.hparams.update({k: v for k, v in hp.items() if _plain(v)})
        apply_state(
            enc.nnet, {k: v.to(dtype) for k, v in state.items()},
            report=LoadReport(source=source, what="SatCLIP location encoder"), strict=True,
            prefix=(f"{source}: the SIREN tensors do not fit a SirenNet with "
                    f"L={hp['legendre_polys']}, capacity={hp['capacity']}, embed_dim="
                    f"{hp['embed_dim']}, num_hidden_layers={hp['num_hidden_layers']}"),
            fix="Is the file a SatCLIP checkpoint, and complete?")
        return enc.eval()

    @property
    def unchanged_since_load(self) -> bool:
        """Whether the weights still equal those read from :attr:`source_path`."""
        return self._source_state is not None and state_dict_sha256(self) == self._source_state

    # -- inference -------------------------------------------------------------------
    def forward(self, lonlat: torch.Tensor) -> torch.Tensor:
        """Embed ``(N, 2)`` ``(lon, lat)`` degrees into ``(N, embed_dim)``."""
        feats = self.posenc(lonlat)
        w = self.nnet.last_layer.weight
        return self.nnet(feats.to(device=w.device, dtype=w.dtype))

    @property
    def default_batch_size(self) -> int:
        """Points per :meth:`encode` batch: about 32 MB of float64 features, 1024 to 8192."""
        return max(1024, min(8192, 4_000_000 // self.posenc.embedding_dim))

    def encode(self, lon: Any, lat: Any, *, batch_size: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """Fast eval-mode embedding of numpy longitudes/latitudes (degrees).

        Computes the features in batches into a reused buffer and runs the SIREN with
        in-place BLAS calls; the result equals ``self.eval()(lonlat)``.

        Parameters
        ----------
        lon, lat
            Array-likes of the same size (flattened).
        batch_size
            Points per batch (bounds memory: ``batch_size * L**2`` float64 values); by
            default :attr:`default_batch_size`.
        out
            Optional ``(N, embed_dim)`` array in the network dtype to write into.

        Returns
        -------
        numpy.ndarray
            ``(N, embed_dim)`` in the network dtype (float64 by default).
        """
        lon_a, lat_a = as_lonlat(lon, lat)
        n = lon_a.size
        batch_size = int(batch_size or self.default_batch_size)
        dt = self.dtype
        np_dt = torch.empty((), dtype=dt).numpy().dtype
        if out is None:
            out = np.empty((n, self.embed_dim), dtype=np_dt)
        dev = self.nnet.last_layer.weight.device
        if dev.type != "cpu" or dt != torch.float64:
            # generic path (GPU or reduced precision)
            with torch.inference_mode():
                for s in range(0, n, batch_size):
                    ll = torch.from_numpy(np.stack([lon_a[s:s + batch_size],
                                                    lat_a[s:s + batch_size]], 1))
                    f = self.posenc(ll).to(device=dev, dtype=dt)
                    out[s:s + batch_size] = self.nnet.eval()(f).cpu().numpy()
            return out
        buf = np.empty((min(batch_size, n), self.posenc.embedding_dim), dtype=np.float64)
        hidden = [np.empty((min(batch_size, n), lay.weight.shape[0]))
                  for lay in self.nnet.sine_layers]
        with torch.inference_mode():
            weights, (w_last, b_last) = self._folded_weights()
            for s in range(0, n, batch_size):
                k = min(batch_size, n - s)
                h = torch.from_numpy(self.posenc.features(lon_a[s:s + k], lat_a[s:s + k],
                                                          out=buf[:k]))
                for (wt, b), hbuf in zip(weights, hidden, strict=True):
                    h = torch.addmm(b, h, wt, out=torch.from_numpy(hbuf[:k])).sin_()
                torch.addmm(b_last, h, w_last, out=torch.from_numpy(out[s:s + k]))
        return out

    def _folded_weights(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                       tuple[torch.Tensor, torch.Tensor]]:
        """``(w0 W^T, w0 b)`` per sine layer (saves a pass over the activations), cached
        until a parameter changes."""
        params = [p for lay in (*self.nnet.sine_layers, self.nnet.last_layer)
                  for p in (lay.weight, lay.bias)]
        stamp = tuple((id(p), p._version) for p in params)
        cached = getattr(self, "_folded", None)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with torch.no_grad():
            hidden = [((lay.weight.detach() * lay.w0).t().contiguous(),
                       lay.bias.detach() * lay.w0) for lay in self.nnet.sine_layers]
            last = self.nnet.last_layer
            folded = (hidden, (last.weight.detach().t().contiguous(), last.bias.detach().clone()))
        self._folded = (stamp, folded)
        return folded

    def extra_repr(self) -> str:
        src = f", source={Path(self.source_path).name!r}" if self.source_path else ""
        return f"L={self.legendre_polys}, embed_dim={self.embed_dim}{src}"


def _plain(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | type(None))


# --------------------------------------------------------------------------------------
# Image encoders
# --------------------------------------------------------------------------------------


def _bare_spec(arch: str, L: int, *, window: int | None = None, stride: int | None = None,
               feature_dim: int = 256) -> ModelSpec:
    w = int(window or _ARCHS[arch]["window"])
    return ModelSpec(
        name=f"satclip-{arch}-l{L}",
        modalities=(ModalitySpec("s2", SATCLIP_S2_BANDS, None, None, units="reflectance"),),
        window=w,
        stride=int(stride or w),
        feature_dim=int(feature_dim),
        fuses_time=False,
        output="pooled",
        dtype="float32",
        default_batch_size=8 if arch == "resnet50" else 16,
    )


def _card(arch: str, L: int) -> ModelCard:
    hub = f"microsoft/SatCLIP-{_ARCHS[arch]['hub']}-L{L}"
    fname = f"satclip-{arch}-l{L}.ckpt"
    return ModelCard.from_spec(
        _bare_spec(arch, L),
        description=(f"SatCLIP {arch} image encoder (trained with L={L} location "
                     "encoder): one 256-d vector per Sentinel-2 L2A tile"),
        license="MIT",
        paper=_PAPER,
        family="satclip",
        weights=(WeightFile(
            fname, sha256=None, url=None,
            source=(f"Hugging Face repository {hub}, file {fname} (image and location "
                    "encoder in one Lightning checkpoint). The pinned revision and the "
                    "sha256 are not known offline; download_checkpoint() fetches the file "
                    "from the repository's moving main branch, so check what you get.")),),
        extra={
            "architecture": {"resnet18": "timm resnet18", "resnet50": "timm resnet50",
                             "vit16": "timm vit_small_patch16_224 (ViT-S/16)"}[arch],
            "in_chans": 13,
            "preprocessing": "reflectance = DN / 10000; zero B10 inserted at channel 10; "
                             "no mean/std normalisation",
            "legendre_polys": L,
            "hub_repo": hub,
            "weights_file": fname,
            # the (unpinned) download source of download_checkpoint
            "weights_url": checkpoint_url(f"satclip-{arch}-l{L}"),
        },
    )


def _image_spec(arch: str, L: int, *, window: int | None = None, stride: int | None = None,
                feature_dim: int = 256) -> ModelSpec:
    return _bare_spec(arch, L, window=window, stride=stride, feature_dim=feature_dim).replace(
        meta=CARDS[f"satclip-{arch}-l{L}"].metadata())


class SatCLIPImageEncoder(EmbeddingModel):
    """A SatCLIP Sentinel-2 image encoder as an :class:`~xsky.models.EmbeddingModel`.

    Takes the 12 L2A bands (``SATCLIP_S2_BANDS``) as reflectance (DN / 10 000, the engine's unit),
    inserts the zero B10 channel SatCLIP's MoCo backbones expect and returns one
    ``feature_dim``-vector (256) per window: ``output="pooled"``.

    Attributes
    ----------
    visual
        The timm-compatible backbone (``model.visual.*`` of the official checkpoint).
    hparams
        ``hyper_parameters`` of the checkpoint it was loaded from (empty without one).
    checkpoint_path
        Path of that checkpoint, or ``None``.
    """

    def __init__(self, spec: ModelSpec, arch: str) -> None:
        super().__init__()
        self.spec = spec
        self.arch = arch
        self.visual = _ARCHS[arch]["builder"](in_chans=13, num_classes=spec.feature_dim)
        self.hparams: dict[str, Any] = {}
        self.checkpoint_path: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 12 or 13, W, W)`` reflectance to ``(N, feature_dim)``."""
        if x.ndim != 4 or x.shape[1] not in (12, 13):
            raise DimensionError(
                f"{self.spec.name} takes (N, 12, H, W) Sentinel-2 L2A reflectance in the band "
                f"order {SATCLIP_S2_BANDS} (or 13 channels with B10), got {tuple(x.shape)}"
            )
        if self.arch == "vit16" and tuple(x.shape[-2:]) != (224, 224):
            raise DimensionError(
                f"{self.spec.name} (ViT-S/16) needs 224x224 windows, got "
                f"{tuple(x.shape[-2:])}; keep window=224"
            )
        if x.shape[1] == 12:
            zero = x.new_zeros((x.shape[0], 1, *x.shape[2:]))
            x = torch.cat((x[:, :B10_INDEX], zero, x[:, B10_INDEX:]), dim=1)
        return self.visual(x)

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(inputs["s2"])

    def location_encoder(self, *, trust: bool = False) -> LocationEncoder:
        """The location encoder stored in the same checkpoint."""
        if self.checkpoint_path is None:
            raise CheckpointError(
                f"{self.spec.name} was built without weights, so it has no location encoder; "
                f"create it with create_model({self.spec.name!r}, weights=<.ckpt>)"
            )
        return LocationEncoder.from_checkpoint(self.checkpoint_path, trust=trust)


def visual_state(ckpt: Mapping[str, Any], *, source: str = "checkpoint") -> dict[str, Any]:
    """The image-encoder tensors of a SatCLIP checkpoint, with timm key names.

    This is the checkpoint filter of the SatCLIP image encoders (see
    :mod:`xsky.models._checkpoint`); :func:`read_location_state` is the location encoder's.

    Accepts ``model.visual.*`` (official Lightning file), ``visual.*``, or a bare timm
    state dict (``conv1.weight``/``patch_embed.proj.weight`` at the top).
    """
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(sd, Mapping):
        what = (f"a single tensor of shape {tuple(ckpt.shape)}" if hasattr(ckpt, "shape")
                else f"a {type(ckpt).__name__}" if not isinstance(ckpt, Mapping)
                else f"a 'state_dict' entry of type {type(sd).__name__}")
        raise CheckpointError(
            f"{source} holds {what}, not a state dict; pass the official SatCLIP Lightning "
            "checkpoint (.ckpt, a dict with 'state_dict' and 'hyper_parameters'; "
            "xsky.models.satclip.download_checkpoint fetches it)"
        )
    for prefix in ("model.visual.", "visual."):
        sub = {k[len(prefix):]: v for k, v in sd.items()
               if isinstance(k, str) and k.startswith(prefix)}
        if sub:
            return sub
    if "conv1.weight" in sd or "patch_embed.proj.weight" in sd:
        return dict(sd)
    raise CheckpointError(
        f"{source} has no image-encoder tensors (no 'model.visual.*' keys); it may hold only "
        "the location encoder: use xsky.location_embed / LocationEncoder.from_checkpoint for "
        "it, or pass a full SatCLIP checkpoint"
    )


def _create_image_model(arch: str, L: int, weights: str | None = None, *,
                        stride: int | None = None, window: int | None = None,
                        trust: bool = False, feature_dim: int = 256) -> SatCLIPImageEncoder:
    name = f"satclip-{arch}-l{L}"
    default_window = _ARCHS[arch]["window"]
    if window is not None and arch == "vit16" and int(window) != default_window:
        raise ArgumentError(
            f"{name} is a ViT-S/16 with a 224x224 position embedding; window must be 224, "
            f"got {window}"
        )
    if window is not None and (int(window) < 32 or int(window) % 32):
        raise ArgumentError(f"{name}: window must be a positive multiple of 32, got {window}")
    ckpt: Any = None
    state: dict[str, Any] | None = None
    if weights is not None:
        ckpt = load_checkpoint(weights, trust=trust,
                               sha256=CARDS[name].expected_sha256(weights))
        state = visual_state(ckpt, source=str(weights))
        hp = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
        if isinstance(hp, Mapping):
            _check_hparams(name, arch, L, hp, str(weights))
        head = state.get(f"{_ARCHS[arch]['head']}.weight")
        if head is not None:
            feature_dim = int(head.shape[0])
    spec = _image_spec(arch, L, window=window, stride=stride, feature_dim=feature_dim)
    model = SatCLIPImageEncoder(spec, arch)
    if state is not None:
        apply_state(
            model.visual, state, report=LoadReport(source=str(weights), what=f"{name} weights"),
            strict=True,
            prefix=(f"{weights}: the image-encoder tensors do not fit {name} "
                    f"({spec.metadata['architecture']}, 13 input channels)"),
            fix=f"Is it a {name} checkpoint? The architecture and L are in its name.")
        model.checkpoint_path = str(weights)
        if isinstance(ckpt.get("hyper_parameters"), Mapping):
            model.hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if _plain(v)}
    return model.eval()


def _check_hparams(name: str, arch: str, L: int, hp: Mapping[str, Any], source: str) -> None:
    want = _ARCHS[arch]["vision_layers"]
    got = hp.get("vision_layers")
    if got is not None and got != want:
        other = next((a for a, i in _ARCHS.items() if i["vision_layers"] == got), None)
        hint = f"; load it as 'satclip-{other}-l{hp.get('legendre_polys', L)}'" if other else ""
        raise CheckpointError(
            f"{source} was trained with vision_layers={got!r} but {name} is {want!r}{hint}"
        )
    lp = hp.get("legendre_polys")
    if lp is not None and int(lp) != L:
        raise CheckpointError(
            f"{source} has legendre_polys={lp} but the model name {name!r} says L={L}; "
            f"use 'satclip-{arch}-l{int(lp)}'"
        )


# --------------------------------------------------------------------------------------
# Checkpoint download (optional; a local path always works)
# --------------------------------------------------------------------------------------

_DOWNLOAD_LOCK = threading.Lock()


def checkpoint_url(name: str) -> str:
    """Hugging Face URL of the official checkpoint of a registered SatCLIP model."""
    arch, L = _parse_name(name)
    return _HUB_URL.format(hub=_ARCHS[arch]["hub"], L=L, file=f"satclip-{arch}-l{L}.ckpt")


def _parse_name(name: str) -> tuple[str, int]:
    if name not in SATCLIP_MODELS:
        raise ArgumentError(
            f"unknown SatCLIP model {name!r}; choose one of {format_choices(SATCLIP_MODELS)}"
        )
    _, arch, lpart = name.split("-")
    return arch, int(lpart[1:])


def default_cache_dir() -> Path:
    """``$XSKY_CACHE_DIR`` or ``~/.cache/xsky``, plus ``/satclip``."""
    root = os.environ.get("XSKY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "xsky")
    return Path(root) / "satclip"


def download_checkpoint(name: str, *, cache_dir: str | os.PathLike[str] | None = None,
                        force: bool = False) -> Path:
    """Download (once) the official checkpoint of a SatCLIP model and return its local path.

    Parameters
    ----------
    name
        One of ``SATCLIP_MODELS``, e.g. ``"satclip-resnet18-l10"``.
    cache_dir
        Where to keep files (default :func:`default_cache_dir`). A file already there is
        reused without network access.
    force
        Download again even if the file is cached.

    Returns
    -------
    pathlib.Path
        Local path to pass as ``weights=`` to :func:`xsky.models.create_model` or to
        :meth:`LocationEncoder.from_checkpoint`.
    """
    url = checkpoint_url(name)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / url.rsplit("/", 1)[1]
    with _DOWNLOAD_LOCK:
        if target.is_file() and not force:
            return target
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, f, length=1 << 20)
            os.replace(tmp, target)  # atomic: a partial download is never mistaken for a file
        except OSError as err:
            raise CheckpointError(
                f"could not download {url} ({err}); download it by hand and pass its local "
                "path as weights="
            ) from err
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


#: Model cards of the six released image encoders, by registry name.
CARDS: dict[str, ModelCard] = {f"satclip-{a}-l{L}": _card(a, L) for a in _ARCHS for L in (10, 40)}

# Register the six released models (importing xsky.models runs this).
for _arch in _ARCHS:
    for _L in (10, 40):
        register_model(
            f"satclip-{_arch}-l{_L}",
            partial(_create_image_model, _arch, _L),
            spec=_image_spec(_arch, _L),
            card=CARDS[f"satclip-{_arch}-l{_L}"],
        )
del _arch, _L
