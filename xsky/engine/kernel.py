"""The block kernel: one dask block of input in, one block of embeddings out.

Runs inside tasks. Gathers the windows a block owns, normalises them, runs the model in
batches and stitches the kept part of each window's output into the block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import XSkyError
from .plan import AxisPlan

__all__ = ["BlockTask", "ModalityInput", "run_block"]


@dataclass(frozen=True)
class ModalityInput:
    """How the kernel turns one modality's raw block into model input.

    ``scale``/``convert`` map input units to the model's; then ``(x - mean) / std``.
    """

    name: str
    n_bands: int
    grid_factor: int
    convert: str  # "none", "scale", "lin2db", "db2lin"
    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    doy: tuple[int, ...] | None = None  # per date, for time-fusing models


@dataclass(frozen=True)
class BlockTask:
    """Everything a task needs, small and picklable (no weights)."""

    ref: Any  # ModelRef
    modalities: tuple[ModalityInput, ...]
    plan_y: AxisPlan
    plan_x: AxisPlan
    fuses_time: bool
    output: str
    feature_dim: int
    device: str
    batch_size: int
    precision: str

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("xsky.BlockTask", self.ref.__dask_tokenize__(), self.modalities, self.plan_y,
                self.plan_x, self.device, self.batch_size, self.precision)


def _normalise(xb: Any, vb: Any, mod: ModalityInput, torch: Any) -> tuple[Any, Any]:
    """Units, normalisation and fill for a batch of raw windows (on the model's device).

    ``xb`` is ``(B, C, ...)`` and ``vb`` the matching ``(B, ...)`` valid flags (already
    false where a band is not finite); invalid pixels become 0, the band mean after
    normalisation.
    """
    if mod.convert == "scale":
        xb = xb * mod.scale
    elif mod.convert == "lin2db":  # non-positive backscatter has no dB value: invalid
        vb = vb & (xb > 0).all(dim=1)
        xb = 10.0 * torch.log10(torch.where(xb > 0, xb, 1.0))
    elif mod.convert == "db2lin":
        xb = torch.pow(10.0, xb / 10.0)
    if mod.mean is not None:
        shape = (-1,) + (1,) * (xb.ndim - 2)
        mean = torch.tensor(mod.mean, dtype=xb.dtype, device=xb.device).view(shape)
        std = torch.tensor(mod.std, dtype=xb.dtype, device=xb.device).view(shape)
        xb = (xb - mean) / std
    xb = torch.where(vb[:, None], xb, torch.zeros((), dtype=xb.dtype, device=xb.device))
    return xb, vb


def _real_mask(plan: AxisPlan, block: int, start: int, length: int, g: int) -> np.ndarray:
    """Which of ``length`` padded positions from data offset ``start`` are real pixels."""
    p = plan.data_start[block] * g + start + np.arange(length)
    return (p >= plan.pad_lo * g) & (p < (plan.pad_lo + plan.n) * g)


def run_block(*blocks: np.ndarray, task: BlockTask, block_id: Sequence[int] | None = None
              ) -> np.ndarray:
    """Embed one block. ``blocks`` holds one raw array ``(T, C+1, H, W)`` per modality."""
    import torch

    from ..runtime.cache import get_model
    from ..runtime.device import device_lock, resolve_device

    assert block_id is not None
    by, bx = (block_id[1], block_id[2]) if not task.fuses_time else (block_id[0], block_id[1])
    py, px = task.plan_y, task.plan_x
    k0y, k1y = py.windows[by]
    k0x, k1x = px.windows[bx]
    nwy, nwx = k1y - k0y, k1x - k0x
    s, out_w = py.stride, (py.core // py.stride if task.output == "dense" else 1)
    oy_n, ox_n = py.out_chunks[by], px.out_chunks[bx]
    n_t = blocks[0].shape[0]

    device = resolve_device(task.device)
    model = get_model(task.ref, device)
    lock = device_lock(device)
    amp = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if task.precision == "bfloat16" else contextlib.nullcontext()
    )

    # per modality: raw windows as strided views (T, C, nwy, nwx, Wm, Wm) and valid flags;
    # normalisation happens per batch, on the model's device
    views, valids, footprints = [], [], []
    for raw, mod in zip(blocks, task.modalities, strict=True):
        g = mod.grid_factor
        xt = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
        vals = xt[:, : mod.n_bands]
        flag = (xt[:, mod.n_bands] > 0.5) & torch.isfinite(vals).all(1)
        wm, cm = py.window * g, py.core * g
        oy, ox = py.window_offset(by) * g, px.window_offset(bx) * g
        views.append(vals[:, :, oy:, ox:].unfold(2, wm, cm).unfold(3, wm, cm)[:, :, :nwy, :nwx])
        valids.append(flag[:, oy:, ox:].unfold(1, wm, cm).unfold(2, wm, cm)[:, :nwy, :nwx])
        # validity of each output cell, counting real (unpadded), finite pixels only
        cy0, cx0 = oy + py.margin_lo * g, ox + px.margin_lo * g
        ly, lx = nwy * py.core * g, nwx * px.core * g
        core = (slice(None), slice(cy0, cy0 + ly), slice(cx0, cx0 + lx))
        core_valid = flag[core].numpy()
        core_valid = core_valid & _real_mask(py, by, cy0, ly, g)[None, :, None]
        core_valid = core_valid & _real_mask(px, bx, cx0, lx, g)[None, None, :]
        sg = s * g
        cells = core_valid.reshape(raw.shape[0], ly // sg, sg, lx // sg, sg).any(axis=(2, 4))
        footprints.append(cells)

    # windows-major layout, so a batch is stored with one vectorised assignment
    lead = () if task.fuses_time else (n_t,)
    out6 = np.empty((*lead, nwy, out_w, nwx, out_w, task.feature_dim), np.float32)
    n_items = int(np.prod(lead, dtype=int)) * nwy * nwx

    items = np.arange(n_items)
    keep = slice(py.margin_lo // s, py.margin_lo // s + out_w) if task.output == "dense" else None
    with torch.inference_mode(), (lock or contextlib.nullcontext()):
        for start in range(0, n_items, task.batch_size):
            idx = items[start:start + task.batch_size]
            inputs: dict[str, Any] = {}
            if task.fuses_time:
                ky, kx = np.divmod(idx, nwx)
                for v, va, mod in zip(views, valids, task.modalities, strict=True):
                    # (T, C, B, W, W): adjacent advanced indices stay in place
                    xb = v[:, :, ky, kx].permute(2, 1, 0, 3, 4).to(device, non_blocking=True)
                    vb = va[:, ky, kx].permute(1, 0, 2, 3).to(device)
                    xb, vb = _normalise(xb, vb, mod, torch)
                    inputs[mod.name], inputs[mod.name + "_valid"] = xb, vb
                    if mod.doy is not None:  # None: no time axis, so no date to encode
                        doy = torch.as_tensor(mod.doy, dtype=torch.int64)
                        inputs[mod.name + "_doy"] = doy.expand(len(idx), -1).to(device)
            else:
                t, rem = np.divmod(idx, nwy * nwx)
                ky, kx = np.divmod(rem, nwx)
                mod = task.modalities[0]
                xb = views[0][t, :, ky, kx].to(device, non_blocking=True)  # (B, C, W, W)
                vb = valids[0][t, ky, kx].to(device)
                inputs[mod.name] = _normalise(xb, vb, mod, torch)[0]
            with amp:
                y = model.embed_windows(inputs)
            y = _check_output(y, len(idx), task, torch)
            y = y.float()
            if keep is not None:
                y = y[:, :, keep, keep]
            y = y.permute(0, 2, 3, 1).cpu().numpy()  # (B, ow, ow, F)
            if task.fuses_time:
                out6[ky, :, kx] = y
            else:
                out6[t, ky, :, kx] = y
    out = out6.reshape(*lead, nwy * out_w, nwx * out_w, task.feature_dim)

    # cells with no valid input anywhere get NaN
    if task.fuses_time:
        any_valid = np.logical_or.reduce([f.any(axis=0) for f in footprints])
        out[~any_valid] = np.nan
        return out[:oy_n, :ox_n]
    out[~footprints[0]] = np.nan
    return out[:, :oy_n, :ox_n]


def _check_output(y: Any, n: int, task: BlockTask, torch: Any) -> Any:
    if task.output == "pooled":
        want: tuple[int, ...] = (n, task.feature_dim)
        if isinstance(y, torch.Tensor) and tuple(y.shape) == want:
            return y[:, :, None, None]
    else:
        w = task.plan_y.window // task.plan_y.stride
        want = (n, task.feature_dim, w, w)
        if isinstance(y, torch.Tensor) and tuple(y.shape) == want:
            return y
    got = tuple(y.shape) if hasattr(y, "shape") else type(y).__name__
    raise XSkyError(
        f"model {task.ref.spec.name!r} returned {got} for a batch of {n} windows; expected {want} "
        "as declared by its spec (feature_dim, window, stride, output)"
    )
