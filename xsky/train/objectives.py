"""Pretraining objectives: SkySense-style multi-granularity self-distillation, cross-modal
alignment, geo-context prototypes, and SatCLIP's location-image CLIP loss.

Every objective is an :class:`Objective` (a ``torch.nn.Module``) used by the training loop:

- ``forward(out: StepOutputs) -> dict``: ``"loss"`` (a differentiable scalar) and detached
  scalar metrics, for one micro-batch;
- ``after_step(step, total_steps, reduce)``: once per optimiser step, after
  ``optimizer.step()``: EMA updates of teacher heads, centres and prototypes from the
  statistics accumulated over the step's micro-batches. ``reduce`` all-reduces (mean) a
  tensor across ranks (identity on one process); every statistic is kept as a sum and a
  count, so one rank with ``A`` micro-batches and ``R`` ranks with ``A / R`` each make the
  same update. Every rank calls ``reduce`` the same number of times, in the same order;
- ``config()``: JSON-able hyperparameters (part of the checkpoint fingerprint).

State that must survive a resume (centres, prototypes, teacher heads, the step of the
temperature schedule) lives in buffers and parameters, so in ``state_dict()``. Teacher features
are always detached here: no gradient reaches the teacher, whatever the caller did.

Hyperparameters the SkySense paper does not give (heads, number of objects, temperatures,
centring) follow DINO (:data:`DINO_PRESET`); see ``spec/skysense.md`` §2.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._coerce import positive_float, positive_int
from ..engine.regions import SKYSENSE_GRID, Regions, region_index
from ..exceptions import ArgumentError, DataError, DimensionError
from .features import Features
from .losses import INIT_LOGIT_SCALE, CLIPLoss, clip_loss
from .views import View, align

__all__ = [
    "DINO_PRESET",
    "SKYSENSE_REGIONS",
    "CrossModalAlignment",
    "DINOHead",
    "GeoPrototypeLoss",
    "LocationImageCLIP",
    "MultiGranularityContrastive",
    "Objective",
    "StepOutputs",
    "cluster_objects",
    "dino_loss",
    "info_nce",
    "masked_mean",
    "sinkhorn_knopp",
    "teacher_momentum",
    "teacher_temperature",
]

Reduce = Callable[[torch.Tensor], torch.Tensor]

#: DINO's defaults (Caron et al. 2021, ``main_dino.py`` argument names), per optimiser step:
#: teacher EMA momentum 0.996 -> 1 (cosine over the run), teacher temperature 0.04 -> 0.07
#: (linear over ``warmup_teacher_temp_steps``, then constant), student temperature 0.1,
#: centre momentum 0.9, gradient clipping at norm 3.0 (applied by the loop).
DINO_PRESET: dict[str, Any] = {
    "momentum_teacher": 0.996,
    "momentum_teacher_end": 1.0,
    "warmup_teacher_temp": 0.04,
    "teacher_temp": 0.07,
    "warmup_teacher_temp_steps": 1000,
    "student_temp": 0.1,
    "center_momentum": 0.9,
    "clip_grad": 3.0,
}


# --------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------
def teacher_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0
                     ) -> float:
    """EMA momentum of the teacher after optimiser step ``step`` (0-based): cosine from
    ``base`` at step 0 to ``final`` at ``total_steps`` (DINO's schedule).

    The loop uses it for the encoder's EMA teacher; objectives for their teacher heads.

    Examples
    --------
    >>> teacher_momentum(0, 100), teacher_momentum(100, 100), teacher_momentum(50, 100)
    (0.996, 1.0, 0.998)
    """
    total = positive_int(total_steps, "total_steps")
    s = min(max(int(step), 0), total)
    return final - (final - base) * (math.cos(math.pi * s / total) + 1) / 2


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07
                        ) -> float:
    """DINO's teacher temperature at ``step``: linear from ``start`` (step 0) to ``end`` (step
    ``warmup_steps``), then constant.

    Examples
    --------
    >>> teacher_temperature(0, 10), teacher_temperature(5, 10), teacher_temperature(10, 10)
    (0.04, 0.055, 0.07)
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    return float(start + (end - start) * max(int(step), 0) / warmup_steps)


# --------------------------------------------------------------------------------------
# small losses and tools
# --------------------------------------------------------------------------------------
def dino_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              center: torch.Tensor | float, student_temp: float, teacher_temp: float
              ) -> torch.Tensor:
    """DINO cross-entropy ``-sum softmax((t - c) / tt) * log_softmax(s / ts)``, mean over rows.

    Parameters
    ----------
    student_logits, teacher_logits
        ``(N, K)`` head outputs for the same ``N`` items (the teacher's are detached here).
    center
        ``(K,)`` (or ``(1, K)``) centre subtracted from the teacher logits.
    student_temp, teacher_temp
        Temperatures.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise DimensionError(f"dino_loss takes two (N, K) logits of one shape, got "
                             f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    t = F.softmax((teacher_logits.detach() - center) / teacher_temp, dim=-1)
    s = F.log_softmax(student_logits / student_temp, dim=-1)
    return -(t * s).sum(-1).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows of ``a`` and ``b`` (``(N, D)``; the other rows are
    the negatives): :func:`~xsky.train.losses.clip_loss` at a fixed temperature."""
    return clip_loss(a, b, logit_scale=math.log(1.0 / temperature))


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``(B, D, W, W)`` features over valid pixels ``(B, W, W)``: ``(B, D)`` and
    ``(B,)`` bool (the window has a valid pixel; its mean is 0 otherwise)."""
    w = valid.to(x.dtype)[:, None]
    count = w.sum((2, 3))
    return (x * w).sum((2, 3)) / count.clamp(min=1), count[:, 0] > 0


def _pixels(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` features of the pixels where ``mask`` (B, W, W) is True."""
    return x.permute(0, 2, 3, 1)[mask]


_EXP_RANGE = 600.0  # as xsky.engine.prototypes: exp(-600) is a normal float64


def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, n_iter: int = 3, *,
                   groups: torch.Tensor | None = None) -> torch.Tensor:
    """Torch twin of :func:`xsky.engine.prototypes.sinkhorn_knopp` (same semantics, same
    output), optionally for several independent groups of rows at once.

    Starting from ``exp(scores / epsilon)`` (minus the group's maximum), rescales the
    columns to mass ``1/k`` and the rows to mass ``1/n`` ``n_iter`` times, in float64, then
    normalises the rows to sum to 1; in the log domain when the scores span more than 600
    multiples of ``epsilon``. No gradient flows through it.

    Parameters
    ----------
    scores
        ``(n, k)`` similarities of samples to prototypes.
    epsilon, n_iter
        Entropic regularisation and number of rounds (``0``: a softmax of
        ``scores / epsilon``).
    groups
        ``(n,)`` integer group of each row: rows of different groups never interact (the
        result equals running the function on each group's rows alone). ``None``: one group.

    Returns
    -------
    torch.Tensor
        ``(n, k)`` assignments in the dtype of ``scores``, rows summing to 1.
    """
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise DimensionError(f"sinkhorn_knopp needs a non-empty 2-D (samples, prototypes) "
                             f"score matrix, got shape {tuple(scores.shape)}")
    epsilon = positive_float(epsilon, "epsilon")
    if isinstance(n_iter, bool) or int(n_iter) != n_iter or n_iter < 0:
        raise ArgumentError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    with torch.no_grad():
        z = scores.detach().to(torch.float64) / epsilon
        if not bool(torch.isfinite(z).all()):
            raise DataError("sinkhorn_knopp got NaN or inf scores; drop invalid samples first")
        n, k = z.shape
        if groups is None:
            g = torch.zeros(n, dtype=torch.int64, device=z.device)
        else:
            if groups.shape != (n,):
                raise DimensionError(f"groups must be ({n},), got {tuple(groups.shape)}")
            _, g = torch.unique(groups.to(z.device), return_inverse=True)
        n_groups = int(g.max()) + 1
        size = torch.bincount(g, minlength=n_groups).to(z.dtype)[g][:, None]  # rows per group
        gmax = _group_reduce(z.amax(1), g, n_groups, "amax")
        gmin = _group_reduce(z.amin(1), g, n_groups, "amin")
        use_log = (gmax - gmin >= _EXP_RANGE)[g]
        q = _sinkhorn_exp(z - gmax[g][:, None], g, n_groups, size, k, int(n_iter))
        if bool(use_log.any()):
            q_log = _sinkhorn_log(z, g, n_groups, size, k, int(n_iter))
            q = torch.where(use_log[:, None], q_log, q)
    return q.to(scores.dtype)


def _group_reduce(v: torch.Tensor, g: torch.Tensor, n_groups: int, how: str) -> torch.Tensor:
    init = -math.inf if how == "amax" else math.inf
    out = torch.full((n_groups, *v.shape[1:]), init, dtype=v.dtype, device=v.device)
    idx = g.view(-1, *([1] * (v.ndim - 1))).expand_as(v)
    return out.scatter_reduce(0, idx, v, reduce=how)


def _group_sum(q: torch.Tensor, g: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros((n_groups, q.shape[1]), dtype=q.dtype, device=q.device).index_add_(0, g, q)


def _sinkhorn_exp(z: torch.Tensor, g: torch.Tensor, n_groups: int, size: torch.Tensor, k: int,
                  n_iter: int) -> torch.Tensor:
    q = torch.exp(z)
    for _ in range(n_iter):
        q = q / (_group_sum(q, g, n_groups)[g] * k)  # each prototype: mass 1/k
        q = q / (q.sum(1, keepdim=True) * size)  # each sample: mass 1/n
    return q / q.sum(1, keepdim=True)


def _sinkhorn_log(z: torch.Tensor, g: torch.Tensor, n_groups: int, size: torch.Tensor, k: int,
                  n_iter: int) -> torch.Tensor:
    log_q = z
    for _ in range(n_iter):
        m = _group_reduce(log_q, g, n_groups, "amax")
        lse = m + torch.log(_group_sum(torch.exp(log_q - m[g]), g, n_groups))
        log_q = log_q - lse[g] - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, 1, keepdim=True) - torch.log(size)
    return torch.exp(log_q - torch.logsumexp(log_q, 1, keepdim=True))


def cluster_objects(features: torch.Tensor, valid: torch.Tensor, n_objects: int, *,
                    epsilon: float = 0.05, n_iter: int = 3, rounds: int = 3) -> torch.Tensor:
    """Group each image's valid pixels into ``n_objects`` "objects" (no gradient).

    Per image, on L2-normalised pixel features: centroids start at farthest-point picks
    (first the pixel least similar to the image's mean, then repeatedly the pixel least
    similar to its nearest centroid: deterministic and independent of the pixel order up to
    ties); then ``rounds`` times the pixels are softly assigned by :func:`sinkhorn_knopp`
    (``epsilon``, ``n_iter``; per image) on cosine similarities and each centroid moves to
    the assignment-weighted mean. Each pixel's object is its final assignment's argmax.

    Parameters
    ----------
    features
        ``(B, D, W, W)`` pixel features (the teacher's, on the canonical grid).
    valid
        ``(B, W, W)`` bool.
    n_objects
        Objects per image (fewer are non-empty when an image has fewer valid pixels).

    Returns
    -------
    torch.Tensor
        ``(B, W, W)`` int64 object index, ``-1`` at invalid pixels.
    """
    n_objects = positive_int(n_objects, "n_objects")
    with torch.no_grad():
        b = features.shape[0]
        x = F.normalize(features.detach().float().flatten(2).transpose(1, 2), dim=-1)  # (B,P,D)
        m = valid.reshape(b, -1)
        labels = torch.full(m.shape, -1, dtype=torch.int64, device=x.device)
        if not bool(m.any()):
            return labels.view(valid.shape)
        mean = F.normalize((x * m[..., None]).sum(1), dim=-1)  # (B, D)
        far = torch.einsum("bpd,bd->bp", x, mean)  # similarity to the nearest "centre"
        cents = []
        for _ in range(n_objects):
            pick = far.masked_fill(~m, math.inf).argmin(1)  # least similar valid pixel
            c = x[torch.arange(b), pick]  # (B, D)
            cents.append(c)
            sim = torch.einsum("bpd,bd->bp", x, c)
            far = sim if len(cents) == 1 else torch.maximum(far, sim)
        cent = torch.stack(cents, 1)  # (B, K, D)
        bi, pi = m.nonzero(as_tuple=True)
        for r in range(rounds + 1):
            scores = torch.einsum("bpd,bkd->bpk", x, cent)[bi, pi]  # (N, K)
            q = sinkhorn_knopp(scores.double(), epsilon, n_iter, groups=bi)
            if r == rounds:
                break
            w = torch.zeros(b, x.shape[1], n_objects, dtype=x.dtype, device=x.device)
            w[bi, pi] = q.to(x.dtype)
            mass = w.sum(1)  # (B, K)
            moved = F.normalize(torch.einsum("bpk,bpd->bkd", w, x), dim=-1)
            cent = torch.where((mass > 0)[..., None], moved, cent)
        labels[bi, pi] = q.argmax(1)
    return labels.view(valid.shape)


def _object_means(x: torch.Tensor, labels: torch.Tensor, n_objects: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked means ``(B, K, D)`` of ``(B, D, W, W)`` features per object, and which objects
    are non-empty ``(B, K)``."""
    b, d = x.shape[:2]
    flat = labels.reshape(b, -1)
    onehot = F.one_hot(flat.clamp(min=0), n_objects).to(x.dtype) * (flat >= 0)[..., None]
    count = onehot.sum(1)  # (B, K)
    sums = torch.einsum("bpk,bdp->bkd", onehot, x.reshape(b, d, -1))
    return sums / count.clamp(min=1)[..., None], count > 0


def _touch(params: Any) -> torch.Tensor:
    """0 times every parameter: keeps heads a batch did not use in the graph, so they get
    zero (not missing) gradients and DDP's reducer sees every parameter every step."""
    total: torch.Tensor | None = None
    for p in params:
        if p.requires_grad:
            term = p.sum() * 0.0
            total = term if total is None else total + term
    return torch.zeros(()) if total is None else total


def _cross_pairs(n: int) -> list[tuple[int, int]]:
    if n < 2:
        raise ArgumentError(f"the objective contrasts different views and needs at least 2, got "
                            f"{n}; make_views(batch, n_views=2, ...)")
    return [(a, b) for a in range(n) for b in range(n) if a != b]


# --------------------------------------------------------------------------------------
# contract
# --------------------------------------------------------------------------------------
@dataclass
class StepOutputs:
    """What the loop hands to every objective for one micro-batch.

    Attributes
    ----------
    student
        One :class:`~xsky.train.features.Features` per view, with gradients.
    teacher
        One per view from the EMA encoder (no gradients; detached again here).
    views
        The :class:`~xsky.train.views.View` of each view.
    batch
        The raw batch (``"latlon"``, ``"window"``, ...).
    """

    student: list[Features]
    teacher: list[Features]
    views: list[View]
    batch: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not (len(self.student) == len(self.teacher) == len(self.views)) or not self.student:
            raise ArgumentError(f"StepOutputs needs one student, teacher and view per view, got "
                                f"{len(self.student)}, {len(self.teacher)} and "
                                f"{len(self.views)}")


class Objective(nn.Module):
    """Base of the objectives (see the module docstring for the contract)."""

    name: ClassVar[str] = "objective"

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int, reduce: Reduce) -> None:
        """Nothing to update by default."""

    def config(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2 normalisation -> weight-normalised linear layer.

    The last layer's rows are normalised in the forward pass (DINO's ``weight_norm`` with the
    gain fixed to 1), so the outputs are cosine similarities to ``out_dim`` learned directions.

    Parameters
    ----------
    in_dim, out_dim
        Input width and number of outputs.
    hidden_dim, bottleneck_dim, n_layers
        MLP sizes (DINO: 2048, 256, 3).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512,
                 bottleneck_dim: int = 128, n_layers: int = 3) -> None:
        super().__init__()
        n_layers = positive_int(n_layers, "n_layers")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for mod in self.mlp:
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.mlp(x), dim=-1)
        return F.linear(h, F.normalize(self.last_layer.weight, dim=-1))


def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter
    (the objectives' teacher heads and the loop's teacher encoder)."""
    with torch.no_grad():
        for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
            pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)


def _check_preset(preset: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(preset) - set(DINO_PRESET)
    if unknown:
        raise ArgumentError(f"unknown preset key(s) {sorted(unknown)}; the keys are "
                            f"{sorted(DINO_PRESET)}")
    return {**DINO_PRESET, **preset}


_GRANULARITIES = ("pixel", "object", "image")
#: The SkySense-like region grid (64 x 64 lon/lat cells), the default of GeoPrototypeLoss.
SKYSENSE_REGIONS = Regions("grid", *SKYSENSE_GRID, name="skysense-4096")
_MODALITIES = ("hr", "s2", "s1")


# --------------------------------------------------------------------------------------
# multi-granularity contrastive learning (SkySense MGCL, DINO-style)
# --------------------------------------------------------------------------------------
class MultiGranularityContrastive(Objective):
    """Pixel-, object- and image-level self-distillation between student and EMA teacher.

    For every ordered pair of different views ``(a, b)`` and every stream (the fused feature
    and each per-modality feature in ``modalities`` that both networks return), the student's
    head outputs on view ``a`` are trained towards the teacher's centred, sharpened outputs
    on view ``b`` (:func:`dino_loss`):

    - **pixel**: the same ground pixel in both views (after :func:`~xsky.train.views.align`),
      pixels valid in both;
    - **object**: per image, the pixels valid in both are grouped by
      :func:`cluster_objects` on the teacher's aligned features of view ``b``; the same
      assignment gives the student's and the teacher's object features (masked means);
    - **image**: the masked mean over each view's own valid pixels.

    Each (stream, granularity) has a student :class:`DINOHead`, an EMA teacher copy and a
    centre. ``loss`` is the mean over streams of ``sum_g weights[g] * loss_g``.

    Parameters
    ----------
    dim
        Width of the encoder features.
    out_dim
        Head outputs.
    n_objects
        Objects per image.
    modalities
        Per-modality streams to train (those present in a batch are used; the others' heads
        get zero gradients).
    preset
        DINO hyperparameters (keys of :data:`DINO_PRESET`; missing keys take its values).
    granularities, weights
        Levels to use and their weights (default 1 each).
    hidden_dim, bottleneck_dim
        Head sizes.
    share_heads
        One head per stream for all granularities (centres stay per granularity).
    epsilon, sinkhorn_iters, cluster_rounds
        Object clustering (see :func:`cluster_objects`).
    """

    name: ClassVar[str] = "mgc"
    center: torch.Tensor
    step: torch.Tensor

    def __init__(self, dim: int, *, out_dim: int = 256, n_objects: int = 8,
                 modalities: Sequence[str] = _MODALITIES,
                 preset: Mapping[str, Any] = DINO_PRESET,
                 granularities: Sequence[str] = _GRANULARITIES,
                 weights: Mapping[str, float] | None = None, hidden_dim: int = 512,
                 bottleneck_dim: int = 128, share_heads: bool = False,
                 epsilon: float = 0.05, sinkhorn_iters: int = 3, cluster_rounds: int = 3
                 ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.out_dim = positive_int(out_dim, "out_dim")
        self.n_objects = positive_int(n_objects, "n_objects")
        self.modalities = tuple(modalities)
        self.preset = _check_preset(preset)
        bad = [g for g in granularities if g not in _GRANULARITIES]
        if bad or not granularities:
            raise ArgumentError(f"granularities must be a non-empty subset of {_GRANULARITIES}, "
                                f"got {tuple(granularities)}")
        self.granularities = tuple(granularities)
        self.weights = dict.fromkeys(self.granularities, 1.0)
        self.weights.update({k: float(v) for k, v in (weights or {}).items()})
        self.hidden_dim, self.bottleneck_dim = int(hidden_dim), int(bottleneck_dim)
        self.share_heads = bool(share_heads)
        self.epsilon = positive_float(epsilon, "epsilon")
        self.sinkhorn_iters, self.cluster_rounds = int(sinkhorn_iters), int(cluster_rounds)
        streams = ("fused", *self.modalities)
        self.keys = [f"{s}_{g}" for s in streams for g in self.granularities]
        head_keys = list(streams) if self.share_heads else self.keys
        self.student_heads = nn.ModuleDict({
            k: DINOHead(self.dim, self.out_dim, self.hidden_dim, self.bottleneck_dim)
            for k in head_keys})
        self.teacher_heads = copy.deepcopy(self.student_heads).requires_grad_(False)
        self.register_buffer("center", torch.zeros(len(self.keys), self.out_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._acc: torch.Tensor | None = None  # (n_keys, out_dim + 1): sums | count

    def _head(self, key: str) -> str:
        return key.split("_", 1)[0] if self.share_heads else key

    def teacher_temp(self) -> float:
        """Teacher temperature at the current step."""
        p = self.preset
        return teacher_temperature(int(self.step), int(p["warmup_teacher_temp_steps"]),
                                   p["warmup_teacher_temp"], p["teacher_temp"])

    def _term(self, key: str, student: torch.Tensor, teacher: torch.Tensor,
              tt: float) -> torch.Tensor | None:
        """DINO loss of paired (N, D) student/teacher features under ``key``'s heads."""
        if student.shape[0] == 0:
            return None
        i = self.keys.index(key)
        s_out = self.student_heads[self._head(key)](student)
        with torch.no_grad():
            t_out = self.teacher_heads[self._head(key)](teacher.detach().to(student.dtype))
        loss = dino_loss(s_out, t_out, self.center[i], self.preset["student_temp"], tt)
        self._accumulate(i, t_out)
        return loss

    def _accumulate(self, i: int, t_out: torch.Tensor) -> None:
        if self._acc is None:
            self._acc = torch.zeros(len(self.keys), self.out_dim + 1, dtype=torch.float64,
                                    device=t_out.device)
        self._acc[i, :-1] += t_out.detach().double().sum(0)
        self._acc[i, -1] += t_out.shape[0]

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        pairs = _cross_pairs(len(out.student))
        tt = self.teacher_temp()
        streams = ["fused"] + [m for m in self.modalities
                               if all(m in f.modalities for f in (*out.student, *out.teacher))]
        metrics: dict[str, torch.Tensor] = {}
        total: torch.Tensor = _touch(self.student_heads.parameters())
        for stream in streams:
            s_map = [align(f.stream(stream), v) for f, v in zip(out.student, out.views,
                                                                 strict=True)]
            s_val = [align(f.mask(stream), v) for f, v in zip(out.student, out.views,
                                                               strict=True)]
            t_map = [align(f.stream(stream).detach(), v) for f, v in zip(out.teacher, out.views,
                                                                          strict=True)]
            t_val = [align(f.mask(stream), v) for f, v in zip(out.teacher, out.views,
                                                               strict=True)]
            stream_loss = total.new_zeros(())
            for g in self.granularities:
                key = f"{stream}_{g}"
                terms = []
                for a, b in pairs:
                    if g == "image":
                        s, s_ok = masked_mean(s_map[a], s_val[a])
                        t, t_ok = masked_mean(t_map[b], t_val[b])
                        term = self._term(key, s[s_ok & t_ok], t[s_ok & t_ok], tt)
                    elif g == "pixel":
                        both = s_val[a] & t_val[b]
                        term = self._term(key, _pixels(s_map[a], both),
                                          _pixels(t_map[b], both), tt)
                    else:
                        both = s_val[a] & t_val[b]
                        labels = cluster_objects(t_map[b], both, self.n_objects,
                                                 epsilon=self.epsilon,
                                                 n_iter=self.sinkhorn_iters,
                                                 rounds=self.cluster_rounds)
                        s_obj, ok = _object_means(s_map[a], labels, self.n_objects)
                        t_obj, _ = _object_means(t_map[b], labels, self.n_objects)
                        term = self._term(key, s_obj[ok], t_obj[ok], tt)
                    if term is not None:
                        terms.append(term)
                if terms:
                    loss_g = torch.stack(terms).mean()
                    metrics[f"{stream}/{g}"] = loss_g.detach()
                    stream_loss = stream_loss + self.weights[g] * loss_g
            total = total + stream_loss / len(streams)
        metrics["teacher_temp"] = torch.tensor(tt)
        return {"loss": total, **metrics}

    def after_step(self, step: int, total_steps: int, reduce: Reduce) -> None:
        """Centres from the step's teacher outputs (DINO: ``c = m c + (1 - m) mean``), then
        the teacher heads' EMA with :func:`teacher_momentum`."""
        acc = self._acc
        if acc is None:
            acc = torch.zeros(len(self.keys), self.out_dim + 1, dtype=torch.float64,
                              device=self.center.device)
        acc = reduce(acc)
        self._acc = None
        with torch.no_grad():
            count = acc[:, -1:]
            has = count[:, 0] > 0
            mean = (acc[:, :-1] / count.clamp(min=1e-12)).to(self.center.dtype)
            m = float(self.preset["center_momentum"])
            self.center[has] = self.center[has] * m + (1 - m) * mean[has]
        ema_update(self.teacher_heads, self.student_heads,
              teacher_momentum(step, total_steps, self.preset["momentum_teacher"],
                               self.preset["momentum_teacher_end"]))
        self.step.fill_(int(step) + 1)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "out_dim": self.out_dim,
                "n_objects": self.n_objects, "modalities": list(self.modalities),
                "preset": dict(self.preset), "granularities": list(self.granularities),
                "weights": dict(self.weights), "hidden_dim": self.hidden_dim,
                "bottleneck_dim": self.bottleneck_dim, "share_heads": self.share_heads,
                "epsilon": self.epsilon, "sinkhorn_iters": self.sinkhorn_iters,
                "cluster_rounds": self.cluster_rounds}


# --------------------------------------------------------------------------------------
# cross-modal alignment (SkySense CMA)
# --------------------------------------------------------------------------------------
class CrossModalAlignment(Objective):
    """Symmetric InfoNCE between the modalities' features of the same place.

    For every view and every pair of modalities present (sorted names), the image-level
    features (masked means over each modality's valid pixels) of the same window are
    positives and the other windows of the batch negatives (:func:`info_nce`), after a
    per-modality projection head; windows lacking either modality are left out. With
    ``pixel=True``, also pixels valid in both modalities (the same ground pixel positive,
    the other pixels of the batch negatives; at most ``max_pixels``, evenly spaced).

    Parameters
    ----------
    dim
        Width of the per-modality features.
    out_dim
        Projection width.
    temperature
        InfoNCE temperature.
    modalities
        Modalities with a head.
    projection
        ``"mlp"`` (Linear-GELU-Linear), ``"linear"`` or ``"none"`` (features as they are).
    pixel, pixel_weight, max_pixels
        Pixel-level term, its weight, and the pixels used per view and pair.
    """

    name: ClassVar[str] = "align"

    def __init__(self, dim: int, *, out_dim: int = 128, temperature: float = 0.1,
                 modalities: Sequence[str] = _MODALITIES, projection: str = "mlp",
                 pixel: bool = False, pixel_weight: float = 1.0, max_pixels: int = 1024
                 ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.out_dim = positive_int(out_dim, "out_dim")
        self.temperature = positive_float(temperature, "temperature")
        self.modalities = tuple(modalities)
        if projection not in ("mlp", "linear", "none"):
            raise ArgumentError(f"projection must be 'mlp', 'linear' or 'none', got "
                                f"{projection!r}")
        self.projection = projection
        self.pixel, self.pixel_weight = bool(pixel), float(pixel_weight)
        self.max_pixels = positive_int(max_pixels, "max_pixels")

        def head() -> nn.Module:
            if projection == "none":
                return nn.Identity()
            if projection == "linear":
                return nn.Linear(self.dim, self.out_dim)
            return nn.Sequential(nn.Linear(self.dim, self.dim), nn.GELU(),
                                 nn.Linear(self.dim, self.out_dim))

        self.heads = nn.ModuleDict({m: head() for m in self.modalities})

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        total = _touch(self.heads.parameters())
        image_terms: list[torch.Tensor] = []
        pixel_terms: list[torch.Tensor] = []
        metrics: dict[str, torch.Tensor] = {}
        for f in out.student:
            mods = [m for m in self.modalities if m in f.modalities]
            for m1, m2 in itertools.combinations(sorted(mods), 2):
                p1, ok1 = masked_mean(f.modalities[m1], f.mask(m1))
                p2, ok2 = masked_mean(f.modalities[m2], f.mask(m2))
                ok = ok1 & ok2
                if int(ok.sum()) >= 2:
                    term = info_nce(self.heads[m1](p1[ok]), self.heads[m2](p2[ok]),
                                    self.temperature)
                    image_terms.append(term)
                    metrics[f"{m1}-{m2}"] = term.detach()
                if self.pixel:
                    both = f.mask(m1) & f.mask(m2)
                    x1, x2 = _pixels(f.modalities[m1], both), _pixels(f.modalities[m2], both)
                    n = x1.shape[0]
                    if n > self.max_pixels:  # evenly spaced: deterministic, spread over windows
                        idx = torch.arange(self.max_pixels, device=x1.device) * n // self.max_pixels
                        x1, x2 = x1[idx], x2[idx]
                    if x1.shape[0] >= 2:
                        pixel_terms.append(info_nce(self.heads[m1](x1), self.heads[m2](x2),
                                                    self.temperature))
        if image_terms:
            total = total + torch.stack(image_terms).mean()
        if pixel_terms:
            pix = torch.stack(pixel_terms).mean()
            metrics["pixel"] = pix.detach()
            total = total + self.pixel_weight * pix
        metrics["pairs"] = torch.tensor(float(len(image_terms)))
        return {"loss": total, **metrics}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "out_dim": self.out_dim,
                "temperature": self.temperature, "modalities": list(self.modalities),
                "projection": self.projection, "pixel": self.pixel,
                "pixel_weight": self.pixel_weight, "max_pixels": self.max_pixels}


# --------------------------------------------------------------------------------------
# geo-context prototypes (SkySense GCPL)
# --------------------------------------------------------------------------------------
class GeoPrototypeLoss(Objective):
    """Region-aware prototype learning: Sinkhorn targets from the teacher, EMA prototypes.

    Each window belongs to the region of its centre (``batch["latlon"]``, by ``regions``).
    Every region has ``n_prototypes`` unit vectors in the feature space. Per teacher view,
    the L2-normalised teacher features are assigned to their region's prototypes by
    :func:`sinkhorn_knopp` (``epsilon``, ``n_iter``; each region's samples of the
    micro-batch are one Sinkhorn problem); the student's softmax over the same prototypes
    (cosine / ``temperature``) on another view is trained towards that assignment
    (cross-entropy). After each step, every prototype that received mass moves to
    ``momentum * p + (1 - momentum) * (assignment-weighted mean of the step's teacher
    features)`` and is renormalised, as in :func:`xsky.engine.prototypes.fit_prototypes`.

    The prototype table is a fixed-size buffer ``(R, K, D)`` (in ``state_dict``), one row per
    region id in ``region_ids`` (default: every cell of the grid, 4,096 for
    :data:`~xsky.engine.regions.SKYSENSE_GRID`), initialised with seeded random unit vectors.
    A fixed table keeps ``after_step``'s all-reduce the same shape on every rank; pass the
    regions your cubes cover (e.g. from :func:`xsky.engine.regions.regions_present`) to keep
    it small. Windows outside the table are ignored.

    Note that Sinkhorn balances a region's samples of the micro-batch over its prototypes:
    a region's only window gets a uniform target, and a few windows are forced to share out
    all the prototypes (likely at ``level="image"`` when windows come from many regions).
    ``level="pixel"`` uses every valid pixel (the same ground pixel in both views), so each
    region seen has many samples.

    Parameters
    ----------
    dim
        Feature width.
    n_prototypes
        Prototypes per region (the paper reports 100).
    regions
        A ``"grid"`` or ``"global"`` :class:`~xsky.engine.regions.Regions`.
    region_ids
        Region ids of the table (default: all of ``regions``).
    epsilon, n_iter
        Sinkhorn regularisation and rounds.
    momentum
        Prototype EMA momentum.
    temperature
        Student softmax temperature.
    level
        ``"image"`` (masked means) or ``"pixel"``.
    stream
        ``"fused"`` or a modality name.
    seed
        Seed of the initial prototypes.
    """

    name: ClassVar[str] = "proto"
    prototypes: torch.Tensor
    region_values: torch.Tensor

    def __init__(self, dim: int, *, n_prototypes: int = 16,
                 regions: Regions = SKYSENSE_REGIONS,
                 region_ids: Sequence[int] | np.ndarray | None = None, epsilon: float = 0.05,
                 n_iter: int = 3, momentum: float = 0.99, temperature: float = 0.1,
                 level: str = "image", stream: str = "fused", seed: int = 0) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.n_prototypes = positive_int(n_prototypes, "n_prototypes")
        if regions.kind not in ("grid", "global"):
            raise ArgumentError(f"GeoPrototypeLoss needs regions from lon/lat ('grid' or "
                                f"'global'), got {regions.kind!r}")
        self.regions = regions
        if region_ids is None:
            n = 1 if regions.kind == "global" else regions.nrows * regions.ncols
            ids = np.arange(n, dtype="int64")
        else:
            ids = np.unique(np.asarray(region_ids, dtype="int64"))
            if ids.size == 0 or ids[0] < 0:
                raise ArgumentError("region_ids must be non-empty, non-negative region ids")
        self.epsilon = positive_float(epsilon, "epsilon")
        self.n_iter = int(n_iter)
        if not 0.0 <= momentum < 1.0:
            raise ArgumentError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.temperature = positive_float(temperature, "temperature")
        if level not in ("image", "pixel"):
            raise ArgumentError(f"level must be 'image' or 'pixel', got {level!r}")
        self.level, self.stream, self.seed = level, str(stream), int(seed)
        g = torch.Generator().manual_seed(self.seed)
        protos = torch.randn(ids.size, self.n_prototypes, self.dim, generator=g)
        self.register_buffer("prototypes", F.normalize(protos, dim=-1))
        self.register_buffer("region_values", torch.from_numpy(ids))
        self._acc: torch.Tensor | None = None  # (R, K, D + 1): weighted sums | mass

    def region_rows(self, latlon: torch.Tensor) -> torch.Tensor:
        """Table row of each window ``(B,)`` (``-1``: region not in the table)."""
        if latlon.ndim != 2 or latlon.shape[1] != 2:
            raise DimensionError(f'batch["latlon"] must be (B, 2) (lat, lon) degrees, got '
                                 f"{tuple(latlon.shape)}")
        ll = latlon.detach().cpu().double().numpy()
        if self.regions.kind == "global":
            rid = np.where(np.isfinite(ll).all(1), 0, -1)
        else:
            rid = self.regions.ids_from_lonlat(ll[:, 1], ll[:, 0])
        rows = region_index(rid, self.region_values.cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.int64)

    def _samples(self, s_map: torch.Tensor, s_val: torch.Tensor, t_map: torch.Tensor,
                 t_val: torch.Tensor, rows: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Paired student/teacher samples (N, D) and their table rows (N,)."""
        if self.level == "image":
            s, s_ok = masked_mean(s_map, s_val)
            t, t_ok = masked_mean(t_map, t_val)
            keep = s_ok & t_ok & (rows.to(s.device) >= 0)
            return s[keep], t[keep], rows.to(s.device)[keep]
        both = s_val & t_val & (rows.to(s_val.device) >= 0)[:, None, None]
        pix_rows = rows.to(s_val.device)[:, None, None].expand_as(both)[both]
        return _pixels(s_map, both), _pixels(t_map, both), pix_rows

    def _scores(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (N, K) of each sample to its region's prototypes."""
        xn = F.normalize(x, dim=-1)
        out = xn.new_empty(x.shape[0], self.n_prototypes)
        parts = []
        for r in torch.unique(rows).tolist():
            idx = (rows == r).nonzero().squeeze(1)
            parts.append((idx, xn[idx] @ self.prototypes[r].to(xn.dtype).t()))
        if not parts:
            return out
        idx = torch.cat([p[0] for p in parts])
        return torch.cat([p[1] for p in parts])[torch.argsort(idx)]

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        pairs = _cross_pairs(len(out.student))
        rows = self.region_rows(torch.as_tensor(out.batch["latlon"]))
        s_map = [align(f.stream(self.stream), v) for f, v in zip(out.student, out.views,
                                                                  strict=True)]
        s_val = [align(f.mask(self.stream), v) for f, v in zip(out.student, out.views,
                                                                strict=True)]
        t_map = [align(f.stream(self.stream).detach(), v)
                 for f, v in zip(out.teacher, out.views, strict=True)]
        t_val = [align(f.mask(self.stream), v) for f, v in zip(out.teacher, out.views,
                                                                strict=True)]
        terms = []
        for a, b in pairs:
            s, t, r = self._samples(s_map[a], s_val[a], t_map[b], t_val[b], rows)
            if s.shape[0] == 0:
                continue
            with torch.no_grad():
                q = sinkhorn_knopp(self._scores(t.detach().float(), r), self.epsilon,
                                   self.n_iter, groups=r)
                self._accumulate(F.normalize(t.detach().float(), dim=-1), q, r)
            logp = F.log_softmax(self._scores(s, r) / self.temperature, dim=-1)
            terms.append(-(q.to(logp.dtype) * logp).sum(1).mean())
        metrics: dict[str, torch.Tensor] = {"windows_in_table": (rows >= 0).float().mean()}
        if terms:
            loss = torch.stack(terms).mean()
            metrics["ce"] = loss.detach()
        else:  # a graph-connected zero: no window of a known region
            loss = out.student[0].fused.sum() * 0.0
        return {"loss": loss, **metrics}

    def _accumulate(self, x: torch.Tensor, q: torch.Tensor, rows: torch.Tensor) -> None:
        if self._acc is None:
            self._acc = torch.zeros(*self.prototypes.shape[:2], self.dim + 1,
                                    dtype=torch.float64, device=self.prototypes.device)
        q64, x64 = q.double().to(self._acc.device), x.double().to(self._acc.device)
        rows = rows.to(self._acc.device)
        for r in torch.unique(rows).tolist():  # one (K, D) product per region in the batch
            idx = (rows == r).nonzero().squeeze(1)
            self._acc[r, :, :-1] += q64[idx].t() @ x64[idx]
            self._acc[r, :, -1] += q64[idx].sum(0)

    def after_step(self, step: int, total_steps: int, reduce: Reduce) -> None:
        """EMA of the prototypes towards the step's assignment-weighted teacher means."""
        acc = self._acc
        if acc is None:
            acc = torch.zeros(*self.prototypes.shape[:2], self.dim + 1, dtype=torch.float64,
                              device=self.prototypes.device)
        acc = reduce(acc)
        self._acc = None
        with torch.no_grad():
            mass = acc[..., -1:]
            means = acc[..., :-1] / mass.clamp(min=1e-300)
            p = self.prototypes.double()
            moved = F.normalize(self.momentum * p + (1.0 - self.momentum) * means, dim=-1)
            # a prototype that received no mass keeps its place (exactly)
            self.prototypes.copy_(torch.where(mass > 0, moved.to(self.prototypes.dtype),
                                              self.prototypes))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "n_prototypes": self.n_prototypes,
                "regions": {"kind": self.regions.kind, "dlon": self.regions.dlon,
                            "dlat": self.regions.dlat},
                "n_regions": int(self.region_values.numel()), "epsilon": self.epsilon,
                "n_iter": self.n_iter, "momentum": self.momentum,
                "temperature": self.temperature, "level": self.level, "stream": self.stream,
                "seed": self.seed}


# --------------------------------------------------------------------------------------
# location-image CLIP (SatCLIP)
# --------------------------------------------------------------------------------------
class LocationImageCLIP(Objective):
    """SatCLIP's CLIP loss between a location encoder and the image features of the windows.

    The location encoder gets ``batch["latlon"]`` reordered to ``(lon, lat)`` (the order of
    :class:`xsky.models.satclip.LocationEncoder`); the image side is the student's
    image-level feature (masked mean over valid pixels, averaged over the views), through a
    linear projection to the location embedding width; :class:`~xsky.train.losses.CLIPLoss`
    (learnable temperature) pairs them, the other windows of the batch being negatives.
    Windows without a valid pixel or a finite location are left out.

    Parameters
    ----------
    location_encoder
        Module mapping ``(N, 2)`` ``(lon, lat)`` degrees to ``(N, E)`` (trained with this
        objective: it is a submodule).
    image_dim
        Width of the image features.
    embed_dim
        ``E`` (default: ``location_encoder.embed_dim``).
    detach_image
        Train the location encoder (and the projection) only, against fixed image features
        (SatCLIP-style pretraining of a location encoder on a given image encoder).
    projection
        Learn a linear image projection (else ``image_dim`` must equal ``E``).
    init_logit_scale, learn_logit_scale
        CLIP temperature (log of its inverse) and whether it is learned.
    stream
        ``"fused"`` or a modality name.
    """

    name: ClassVar[str] = "clip"

    def __init__(self, location_encoder: nn.Module, *, image_dim: int,
                 embed_dim: int | None = None, detach_image: bool = True,
                 projection: bool = True, init_logit_scale: float = INIT_LOGIT_SCALE,
                 learn_logit_scale: bool = True, stream: str = "fused") -> None:
        super().__init__()
        self.location_encoder = location_encoder
        self.image_dim = positive_int(image_dim, "image_dim")
        if embed_dim is None:
            embed_dim = getattr(location_encoder, "embed_dim", None)
            if embed_dim is None:
                raise ArgumentError("pass embed_dim= (the location encoder has no embed_dim)")
        self.embed_dim = positive_int(int(embed_dim), "embed_dim")
        self.detach_image, self.projection = bool(detach_image), bool(projection)
        if not self.projection and self.image_dim != self.embed_dim:
            raise ArgumentError(f"projection=False needs image_dim == embed_dim, got "
                                f"{self.image_dim} and {self.embed_dim}")
        self.image_head: nn.Module = (nn.Linear(self.image_dim, self.embed_dim)
                                      if self.projection else nn.Identity())
        self.clip = CLIPLoss(init_logit_scale)
        self.clip.logit_scale.requires_grad_(bool(learn_logit_scale))
        self.init_logit_scale = float(init_logit_scale)
        self.learn_logit_scale = bool(learn_logit_scale)
        self.stream = str(stream)

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        latlon = torch.as_tensor(out.batch["latlon"])
        if latlon.ndim != 2 or latlon.shape[1] != 2:
            raise DimensionError(f'batch["latlon"] must be (B, 2) (lat, lon) degrees, got '
                                 f"{tuple(latlon.shape)}")
        pooled, oks = [], []
        for f in out.student:
            p, ok = masked_mean(f.stream(self.stream), f.mask(self.stream))
            pooled.append(p)
            oks.append(ok)
        ok_any = torch.stack(oks).any(0)
        weight = torch.stack(oks).to(pooled[0].dtype)  # mean over the views where valid
        img = (torch.stack(pooled) * weight[..., None]).sum(0) / weight.sum(0).clamp(min=1)[:, None]
        keep = ok_any & torch.isfinite(latlon).all(1).to(ok_any.device)
        if int(keep.sum()) < 2:  # clip_loss needs a negative
            loss = _touch(self.parameters()) + img.sum() * 0.0
            return {"loss": loss, "pairs": torch.tensor(float(keep.sum()))}
        img = img[keep].detach() if self.detach_image else img[keep]
        lonlat = latlon[keep.to(latlon.device)][:, [1, 0]]
        loc = self.location_encoder(lonlat)
        loss = self.clip(self.image_head(img), loc)
        return {"loss": loss, "logit_scale": self.clip.logit_scale.detach().clone(),
                "pairs": torch.tensor(float(keep.sum()))}

    def config(self) -> dict[str, Any]:
        enc = self.location_encoder
        return {"name": self.name, "image_dim": self.image_dim, "embed_dim": self.embed_dim,
                "detach_image": self.detach_image, "projection": self.projection,
                "init_logit_scale": self.init_logit_scale,
                "learn_logit_scale": self.learn_logit_scale, "stream": self.stream,
                "location_encoder": {"type": type(enc).__name__,
                                     **{k: v for k, v in dict(getattr(enc, "hparams", {})).items()
                                        if isinstance(v, (int, float, str, bool))}}}
