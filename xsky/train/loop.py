"""The training loop: student and EMA teacher, objectives, AMP, clipping, atomic checkpoints,
exact resume, metrics and a progress bar.

Exact resume works by construction: every random draw of a micro-batch (augmented views,
stochastic depth) is seeded from ``(seed, global micro-batch index)``, the sampler's order is
a pure function of its seed and cursors, and the checkpoint holds every tensor that changes
(student, teacher, objectives' heads and buffers, optimiser moments) plus the scheduler's and
sampler's few integers. A run killed at any moment and resumed from its last checkpoint
repeats the uninterrupted run's losses exactly (on the same device and thread count).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..exceptions import ArgumentError, CheckpointError
from ..models._checkpoint import strip_prefix
from .checkpoint import diff_config, latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = ["History", "fit", "micro_batch_seed"]

_PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass
class History:
    """Per-step records of a :func:`fit` run (losses, metrics, learning rate, timing).

    Attributes
    ----------
    records
        One dict per optimiser step, oldest first: ``step`` (1-based), ``loss``,
        ``<objective>/<metric>``, ``lr``, ``momentum``, ``seconds``, ``wait_fraction``.
        After a resume it starts with the records read back from the run's metrics log.
    resumed_from
        The step the run resumed from (``0`` for a fresh run).
    checkpoint
        The last checkpoint written, if any.
    """

    records: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    checkpoint: Path | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: str) -> list[float]:
        """One column, e.g. ``history["loss"]``."""
        if not self.records or key not in self.records[-1]:
            raise KeyError(f"{key!r}; columns: {sorted(self.records[-1]) if self.records else []}")
        return [r.get(key, math.nan) for r in self.records]

    @property
    def losses(self) -> list[float]:
        return self["loss"]

    def to_dataframe(self) -> Any:
        """The records as a :class:`pandas.DataFrame` indexed by step."""
        import pandas as pd

        return pd.DataFrame.from_records(self.records).set_index("step")


def micro_batch_seed(seed: int, index: int) -> int:
    """The RNG seed of global micro-batch ``index`` (a pure function, so resume is exact)."""
    h = hashlib.blake2b(f"xsky.train:{int(seed)}:{int(index)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
def _model_config(model: nn.Module) -> dict[str, Any]:
    """What identifies an architecture: class, spec, parameter names and shapes."""
    shapes = hashlib.sha256(json.dumps(
        [(k, list(v.shape)) for k, v in model.state_dict().items()]).encode()).hexdigest()
    spec = getattr(model, "spec", None)
    out: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                           "parameters": sum(p.numel() for p in model.parameters()),
                           "state_shapes_sha256": shapes}
    if spec is not None:
        out["name"] = spec.name
        out["modalities"] = {m.name: list(m.bands) for m in spec.modalities}
        out["window"], out["feature_dim"] = spec.window, spec.feature_dim
    return out


def _objective_list(objectives: Any) -> list[tuple[Any, float]]:
    if isinstance(objectives, nn.Module):
        objectives = [objectives]
    out: list[tuple[Any, float]] = []
    for o in objectives:
        obj, w = (o if isinstance(o, tuple) else (o, 1.0))
        if not isinstance(obj, nn.Module) or not callable(getattr(obj, "after_step", None)):
            raise ArgumentError(
                f"objectives must be xsky.train objectives (torch modules with after_step), or "
                f"(objective, weight) pairs; got {type(obj).__name__}")
        out.append((obj, float(w)))
    if not out:
        raise ArgumentError("fit needs at least one objective, e.g. "
                            "xsky.train.MultiGranularityContrastive(dim)")
    names = [o.name for o, _ in out]
    if len(set(names)) != len(names):
        raise ArgumentError(f"objective names must be distinct, got {names}")
    return out


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in _PRECISIONS:
        raise ArgumentError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"  # CPU autocast is slower than float32 for these models
    if precision == "float16" and device.type != "cuda":
        raise ArgumentError("precision='float16' needs a CUDA device (gradient scaling); use "
                            "'bfloat16' or 'float32' on CPU")
    return precision


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _lr_factor(step: int, steps: int, warmup: int, final: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``final`` x the peak."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


# --------------------------------------------------------------------------------------
# state <-> tensors
# --------------------------------------------------------------------------------------
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _prefixed(prefix: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in sd.items()}


# --------------------------------------------------------------------------------------
# distributed hooks (set by fit_distributed; identity on one process)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return t
        import torch.distributed as dist

        out = t.detach().clone()
        dist.all_reduce(out)
        return out / self.world_size

    def all_reduce_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average gradients over ranks in one flat buffer (deterministic order)."""
        if not self.active:
            return
        import torch.distributed as dist

        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        pos = 0
        for g in grads:
            g.copy_(flat[pos:pos + g.numel()].view_as(g))
            pos += g.numel()

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _merge_sampler_states(sampler: Any, states: Sequence[Any]) -> Any:
    """One sampler state from every rank's (each rank advances its own shards)."""
    if len(states) == 1:
        return states[0]
    merge = getattr(sampler, "merge_states", None)
    if merge is None:
        raise ArgumentError(f"{type(sampler).__name__} cannot merge per-rank states; "
                            "distributed training needs xsky.train.WindowSampler")
    return merge(list(states))


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------
def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="xsky.train", unit="step",
                file=sys.stderr, dynamic_ncols=True)


def _metrics_log(path: Path | None, resumed: int) -> list[dict[str, float]]:
    """Records of steps ``<= resumed`` from an earlier run's log (rewritten without later
    steps, which the resumed run repeats)."""
    if path is None or not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line torn by a kill
            continue
        if isinstance(rec, dict) and 0 < rec.get("step", 0) <= resumed:
            keep.append(rec)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)
    return keep


def fit(
    model: Any,
    sampler: Any,
    objectives: Any,
    *,
    steps: int,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adamw",
    lr: float = 5e-4,
    weight_decay: float = 0.04,
    warmup_steps: int | None = None,
    final_lr_fraction: float = 0.01,
    precision: str = "auto",
    accumulate: int = 1,
    clip_grad: float | None = 3.0,
    teacher_momentum: float | Callable[[int, int], float] = 0.996,
    n_views: int = 2,
    view_options: Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 2,
    resume: bool = True,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    _dist: _Dist | None = None,
) -> History:
    """Pretrain ``model`` on batches from ``sampler`` with self-supervised ``objectives``.

    Parameters
    ----------
    model
        The encoder to train (the student), e.g. ``xsky.models.create_model("skysense-tiny",
        modalities=("s2",), s2_bands=...)``: trained in place. An EMA copy of it is the
        teacher.
    sampler
        A :class:`xsky.train.WindowSampler` (its micro-batches, in its order).
    objectives
        Objectives (``xsky.train.MultiGranularityContrastive``, ``CrossModalAlignment``,
        ``GeoPrototypeLoss``, ``LocationImageCLIP``), or ``(objective, weight)`` pairs; the
        loss is their weighted sum.
    steps
        Optimiser steps of the whole run (a resumed run continues to this count).
    optimizer
        ``"adamw"``, ``"adam"`` or ``"sgd"`` (momentum 0.9), or a callable
        ``(params, lr=..., weight_decay=...) -> Optimizer``.
    lr, weight_decay, warmup_steps, final_lr_fraction
        Peak learning rate, decoupled weight decay, linear warm-up (default 10 % of
        ``steps``), then cosine decay to ``final_lr_fraction * lr``.
    precision
        ``"auto"`` (bfloat16 on CUDA when supported, else float16 with gradient scaling;
        float32 on CPU), ``"float32"``, ``"bfloat16"`` or ``"float16"`` (CUDA only).
    accumulate
        Micro-batches per optimiser step (per rank); gradients are averaged.
    clip_grad
        Maximum gradient norm (``None``: no clipping).
    teacher_momentum
        Base EMA momentum of the teacher, raised to 1 on a cosine schedule, or a callable
        ``(step, steps) -> momentum``.
    n_views, view_options
        Augmented views per micro-batch and options of :func:`xsky.train.views.make_views`.
    checkpoint_dir, checkpoint_every, keep, resume
        Where checkpoints (``step-XXXXXXXX``, atomic) and the metrics log (``metrics.jsonl``)
        go; every ``checkpoint_every`` steps (default: ``steps // 10``, at least 1) and at
        the end, keeping the newest ``keep``. With ``resume`` the newest checkpoint of the
        folder is loaded first; one of a different configuration is refused, naming the
        field that differs. ``resume=False`` refuses a folder that already holds
        checkpoints (the two runs' steps would mix).
    seed
        Seed of every random draw (views, stochastic depth): with the same sampler, the run
        is reproducible and a resumed run is identical to an uninterrupted one.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    progress
        Show a progress bar (steps/s, data-wait fraction, loss).

    Returns
    -------
    History
        Per-step losses and metrics.

    Raises
    ------
    CheckpointError
        ``resume`` found a checkpoint of another configuration, or a damaged one.
    """
    from .features import encode
    from .objectives import StepOutputs, ema_update
    from .objectives import teacher_momentum as cosine_momentum
    from .views import make_views

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ArgumentError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ArgumentError(f"accumulate must be a positive integer, got {accumulate!r}")
    if not isinstance(n_views, int) or n_views < 2:
        raise ArgumentError(f"n_views must be at least 2 (objectives compare views), got "
                            f"{n_views!r}")
    if isinstance(model, str):
        from ..models import create_model

        model = create_model(model)
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"model must be a torch module (an xsky EmbeddingModel), got "
                            f"{type(model).__name__}")
    dist = _dist or _Dist()
    objs = _objective_list(objectives)
    dev = _resolve_device(device)
    prec = _resolve_precision(precision, dev)
    warmup = max(1, steps // 10) if warmup_steps is None else int(warmup_steps)
    every = checkpoint_every or max(1, steps // 10)
    momentum_fn = (teacher_momentum if callable(teacher_momentum)
                   else (lambda s, n, b=float(teacher_momentum): cosine_momentum(s, n, b)))
    views_opts = dict(view_options or {})

    model.to(dev)
    teacher = copy.deepcopy(model).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    heads = nn.ModuleList([o for o, _ in objs]).to(dev)
    params = [p for p in (*model.parameters(), *heads.parameters()) if p.requires_grad]
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, steps, warmup, final_lr_fraction))
    scaler = torch.amp.GradScaler("cuda") if prec == "float16" else None

    config = {
        "model": _model_config(model),
        "objectives": [{"name": o.name, "weight": w, **o.config()} for o, w in objs],
        "sampler": sampler.config() if hasattr(sampler, "config") else type(sampler).__name__,
        "optimizer": optimizer if isinstance(optimizer, str) else
        f"{getattr(optimizer, '__module__', '')}.{getattr(optimizer, '__qualname__', optimizer)}",
        "lr": lr, "weight_decay": weight_decay, "warmup_steps": warmup,
        "final_lr_fraction": final_lr_fraction, "steps": steps, "accumulate": accumulate,
        "world_size": dist.world_size, "clip_grad": clip_grad, "precision": prec,
        "teacher_momentum": teacher_momentum if not callable(teacher_momentum) else
        getattr(teacher_momentum, "__qualname__", "callable"),
        "n_views": n_views, "view_options": views_opts, "seed": seed,
    }
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    log_path = ckpt_dir / "metrics.jsonl" if ckpt_dir is not None and dist.rank == 0 else None
    start = 0
    history = History()
    existing = latest_checkpoint(ckpt_dir) if ckpt_dir is not None and not resume else None
    if existing is not None:
        # a fresh run here would interleave its checkpoints with the old run's, and a later
        # resume would pick whichever step is highest
        raise CheckpointError(
            f"checkpoint_dir {str(ckpt_dir)!r} already holds checkpoints "
            f"({existing.name}); resume=False needs an empty folder: "
            "use another checkpoint_dir, or resume=True to continue that run")
    if ckpt_dir is not None and resume:
        last = latest_checkpoint(ckpt_dir)
        if last is not None:
            start = _restore(last, config, model, teacher, heads, opt, sched, sampler, dev)
            history.resumed_from = start
            history.checkpoint = last
    history.records = _metrics_log(log_path, start) if start else []
    if log_path is not None and not start:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")  # a fresh run starts a fresh log

    amp = (torch.autocast(device_type=dev.type, dtype=getattr(torch, prec))
           if prec in ("bfloat16", "float16") else contextlib.nullcontext())
    it: Iterator[Any] = iter(sampler)
    bar = _progress(steps, start, progress and dist.rank == 0)
    t_run = time.perf_counter()
    wait0 = _waited(sampler)
    try:
        for step in range(start, steps):
            t0 = time.perf_counter()
            w_before = _waited(sampler)
            sums: dict[str, float] = {}
            model.train()
            for a in range(accumulate):
                index = (step * accumulate + a) * dist.world_size + dist.rank
                batch = next(it)
                rs = micro_batch_seed(seed, index)
                torch.manual_seed(rs)
                gen = torch.Generator().manual_seed(rs ^ 0x5EED)
                batch = {k: (v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                         for k, v in batch.items()}
                views = make_views(batch, n_views, generator=gen, **views_opts)
                with amp:
                    student = [encode(model, inputs) for inputs, _ in views]
                    with torch.no_grad():
                        teach = [encode(teacher, inputs) for inputs, _ in views]
                    out = StepOutputs(student=student, teacher=teach,
                                      views=[v for _, v in views], batch=batch)
                    total = torch.zeros((), device=dev)
                    for o, w in objs:
                        res = o(out)
                        total = total + w * res["loss"].float()
                        for k, v in res.items():
                            key = "loss" if k == "loss" else k
                            sums[f"{o.name}/{key}"] = (sums.get(f"{o.name}/{key}", 0.0)
                                                       + float(v.detach()) / accumulate)
                sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) / accumulate
                if not torch.isfinite(total):
                    raise ArgumentError(
                        f"the loss became {float(total)} at step {step + 1}; lower lr (now "
                        f"{sched.get_last_lr()[0]:.3g}) or use precision='float32'")
                scaled = total / accumulate
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            dist.all_reduce_grads(params)
            if scaler is not None:
                scaler.unscale_(opt)
            if clip_grad is not None:
                sums["grad_norm"] = float(nn.utils.clip_grad_norm_(params, clip_grad))
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            lr_now = float(sched.get_last_lr()[0])
            sched.step()
            m = float(momentum_fn(step, steps))
            ema_update(teacher, model, m)
            with torch.no_grad():
                for bs, bt in zip(model.buffers(), teacher.buffers(), strict=True):
                    bt.copy_(bs)
            for o, _ in objs:
                o.after_step(step, steps, dist.reduce_mean)
            if dist.active:  # the step's numbers over every rank's micro-batches
                keys = sorted(sums)
                vals = dist.reduce_mean(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
                sums = dict(zip(keys, vals.tolist(), strict=True))
            dt = time.perf_counter() - t0
            waited = _waited(sampler) - w_before
            rec: dict[str, float] = {"step": step + 1, **sums, "lr": lr_now, "momentum": m, "seconds": dt,
                   "wait_fraction": waited / dt if dt > 0 else 0.0}
            history.records.append(rec)
            if log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.update(1)
                elapsed = time.perf_counter() - t_run
                done = step + 1 - start
                wait_all = (_waited(sampler) - wait0) / elapsed if elapsed > 0 else 0.0
                bar.set_postfix(loss=f"{sums['loss']:.4f}", wait=f"{wait_all:.0%}",
                                steps_s=f"{done / elapsed:.2f}" if elapsed > 0 else "-")
            if ckpt_dir is not None and ((step + 1) % every == 0 or step + 1 == steps):
                sampler_state = _merge_sampler_states(
                    sampler, dist.gather_objects(sampler.state_dict()))
                if dist.rank == 0:
                    history.checkpoint = _save(ckpt_dir, step + 1, config, model, teacher,
                                               heads, opt, sched, sampler_state, keep)
    finally:
        if bar is not None:
            bar.close()
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return history


def _waited(sampler: Any) -> float:
    """Seconds the sampler's iterator has waited for data so far (0 if it does not say)."""
    stats = getattr(sampler, "stats", None)
    if not isinstance(stats, Mapping):
        return 0.0
    return float(stats.get("first_wait_s", 0.0)) + float(stats.get("wait_s", 0.0))


def _make_optimizer(optimizer: Any, params: list[nn.Parameter], lr: float, wd: float
                    ) -> torch.optim.Optimizer:
    if callable(optimizer):
        return optimizer(params, lr=lr, weight_decay=wd)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    raise ArgumentError(f"optimizer must be 'adamw', 'adam', 'sgd' or a callable, got "
                        f"{optimizer!r}")


def _save(directory: Path, step: int, config: Mapping[str, Any], model: nn.Module,
          teacher: nn.Module, heads: nn.ModuleList, opt: torch.optim.Optimizer,
          sched: Any, sampler_state: Any, keep: int | None) -> Path:
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors = {**_prefixed("student", model.state_dict()),
               **_prefixed("teacher", teacher.state_dict()),
               **_prefixed("objectives", heads.state_dict()), **opt_tensors}
    state = {"config": config, "optimizer": opt_meta, "scheduler": sched.state_dict(),
             "sampler": sampler_state,
             "rng": "every draw is seeded from (seed, global micro-batch index): "
                    "xsky.train.loop.micro_batch_seed"}
    return save_checkpoint(directory, step, tensors, state, keep=keep)


def _restore(path: Path, config: Mapping[str, Any], model: nn.Module, teacher: nn.Module,
             heads: nn.ModuleList, opt: torch.optim.Optimizer, sched: Any, sampler: Any,
             dev: torch.device) -> int:
    tensors, state = load_checkpoint(path)
    saved = json.loads(json.dumps(state.get("config", {})))
    current = json.loads(json.dumps(config))
    differs = diff_config(saved, current)
    if differs is not None:
        raise CheckpointError(
            f"the checkpoint {str(path)!r} is of a different configuration: {differs!r} "
            f"differs (saved {_at(saved, differs)!r}, now {_at(current, differs)!r}); use the "
            "same settings to resume, another checkpoint_dir, or resume=False to start over "
            "in a new folder")
    try:
        model.load_state_dict(strip_prefix(tensors, "student."))
        teacher.load_state_dict(strip_prefix(tensors, "teacher."))
        heads.load_state_dict(strip_prefix(tensors, "objectives."))
        _load_optimizer(opt, {k: v.to(dev) for k, v in tensors.items()}, state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"could not restore {str(path)!r}: {err}") from None
    sched.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    return int(state["step"])


def _at(cfg: Any, dotted: str) -> Any:
    """The value at a path produced by :func:`diff_config` (``<missing>`` if absent)."""
    import re

    cur = cfg
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        try:
            cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return cur
