"""The block kernel: one dask block of input in, one block of embeddings out.

Runs inside tasks, in four steps, each a function: :func:`gather` the windows a block owns,
:func:`_normalise` them (units, statistics, fill) per batch on the model's device,
:func:`run_batches` through the model, and :func:`stitch` the kept part of each window's
output into the block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..exceptions import ModelError
from ..modalities import Conversion
from ..models.spec import ModelRef
from .checks import UnitsCheck, check_units
from .plan import AxisPlan

__all__ = ["BlockTask", "ModalityInput", "gather", "run_batches", "run_block", "stitch"]


@dataclass(frozen=True)
class ModalityInput:
    """How the kernel turns one modality's raw block into model input.

    ``conversion`` maps input units to the model's; then ``(x - mean) / std``.
    """

    name: str
    n_bands: int
    grid_factor: int
    conversion: Conversion
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    doy: tuple[int, ...] | None = None  # per date, for time-fusing models
    month: tuple[int, ...] | None = None  # per date, 0 = January
    nodata: tuple[float | None, ...] = ()  # per band: a value that marks missing data
    has_valid: bool = False  # whether a valid-mask array follows the band arrays
    units_check: UnitsCheck | None = None  # plausibility of the input units, per block


@dataclass(frozen=True)
class BlockTask:
    """Everything a task needs, small and picklable (no weights)."""

    ref: ModelRef
    modalities: tuple[ModalityInput, ...]
    plan_y: AxisPlan
    plan_x: AxisPlan
    fuses_time: bool
    output: str
    feature_dim: int
    device: str
    batch_size: int | None  # None: chosen inside the task (xsky.runtime.batching)
    precision: str
    edge: str = "reflect"
    band_mask: bool = False  # per-band validity (ModelSpec.band_mask)
    location: str | None = None  # "window" | "pixel": pass (lat, lon) (ModelSpec.location)
    grid: tuple[float, float, float, float] | None = None  # reference (y0, dy, x0, dx)
    crs_wkt: str | None = None

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("xsky.BlockTask", self.ref.__dask_tokenize__(), self.modalities, self.plan_y,
                self.plan_x, self.device, self.batch_size, self.precision, self.edge,
                self.band_mask, self.location, self.grid, self.crs_wkt)


@dataclass
class _Gathered:
    """One block's windows, ready to batch: per modality a ``(items, ...)`` tensor of raw
    windows and its valid flags, plus the per-cell validity of each modality's footprint."""

    windows: list[Any]
    flags: list[Any]
    footprints: list[np.ndarray]
    n_items: int
    n_windows: tuple[int, int]
    n_t: int
    latlon: Any = None  # (items, 2) or (items, 2, W, W) float64 tensor, or None


def _normalise(xb: Any, vb: Any, mod: ModalityInput, torch: Any, band_mask: bool = False
               ) -> tuple[Any, Any, Any]:
    """Units, normalisation and fill for a batch of raw windows (on the model's device).

    ``xb`` is ``(B, C, ...)`` and ``vb`` the matching ``(B, ...)`` valid flags (already
    false where a band is not finite, or with ``band_mask`` where no band is). Returns the
    values, the pixel flags and, with ``band_mask``, the ``(B, C, ...)`` per-band flags
    (else ``None``). Invalid values become 0, the band mean after normalisation.
    """
    conv = mod.conversion
    zero = torch.zeros((), dtype=xb.dtype, device=xb.device)
    band_ok = (torch.isfinite(xb) & vb[:, None]) if band_mask else None
    defined = conv.valid(xb)
    if defined is not None:  # e.g. non-positive backscatter has no dB value: invalid
        if band_ok is not None:
            band_ok = band_ok & defined
        else:
            vb = vb & defined.all(dim=1)
        xb = torch.where(defined, xb, 1.0)
    xb = conv.apply(xb)
    if mod.mean is not None:
        shape = (-1,) + (1,) * (xb.ndim - 2)
        mean = torch.tensor(mod.mean, dtype=xb.dtype, device=xb.device).view(shape)
        std = torch.tensor(mod.std, dtype=xb.dtype, device=xb.device).view(shape)
        xb = (xb - mean) / std
    if band_ok is not None:
        vb = band_ok.any(dim=1)
        return torch.where(band_ok, xb, zero), vb, band_ok
    return torch.where(vb[:, None], xb, zero), vb, None


def assemble_block(blocks: Sequence[np.ndarray], nodata: Sequence[float | None],
                   has_valid: bool, any_band: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One modality's band blocks ``(T, H, W)`` (and valid block) as a float32 buffer
    ``(T, C, H, W)`` with NaN at nodata, and a valid mask that is also false where any band
    (``any_band``: every band) is not finite."""
    n = len(blocks) - has_valid
    t, h, w = blocks[0].shape
    buf = np.empty((t, n, h, w), np.float32)
    for i in range(n):
        buf[:, i] = blocks[i]
        if nodata and nodata[i] is not None:
            buf[:, i][blocks[i] == nodata[i]] = np.nan
    finite = np.isfinite(buf)
    valid: np.ndarray = np.asarray(finite.any(axis=1) if any_band else finite.all(axis=1))
    if has_valid:
        valid &= blocks[n].astype(bool, copy=False)
    return buf, valid


def domain_valid(buf: np.ndarray, valid: np.ndarray, conversion: Conversion,
                 any_band: bool = False) -> np.ndarray:
    """``valid`` also false where the conversion to the model's units is undefined (linear
    backscatter <= 0 has no dB value) for all bands (``any_band``: for every band)."""
    defined = conversion.valid(buf)
    if defined is None:
        return valid
    ok = defined & np.isfinite(buf)
    out: np.ndarray = valid & (ok.any(axis=1) if any_band else ok.all(axis=1))
    return out


def _pad_edges(buf: np.ndarray, valid: np.ndarray, pads: tuple[tuple[int, int], ...], edge: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pad an edge block past the array's edge: mirrored pixels, or missing ones."""
    if not any(p for ax in pads for p in ax):
        return buf, valid
    if edge == "reflect":
        return (np.pad(buf, ((0, 0), (0, 0), *pads), mode="reflect"),
                np.pad(valid, ((0, 0), *pads), mode="reflect"))
    return (np.pad(buf, ((0, 0), (0, 0), *pads), constant_values=np.nan),
            np.pad(valid, ((0, 0), *pads), constant_values=False))


def _real_mask(plan: AxisPlan, block: int, start: int, length: int, g: int) -> np.ndarray:
    """Which of ``length`` padded positions from data offset ``start`` are real pixels."""
    p = plan.data_start[block] * g + start + np.arange(length)
    return (p >= plan.pad_lo * g) & (p < (plan.pad_lo + plan.n) * g)


def run_block(*blocks: np.ndarray, task: BlockTask, block_id: Sequence[int] | None = None
              ) -> np.ndarray:
    """Embed one block: gather → normalise → batch (model) → stitch.

    ``blocks`` holds, per modality, its band blocks ``(T, H, W)`` then its valid block (if
    any), with halos; edge blocks are padded here (``task.edge``).
    """
    if block_id is None:
        raise AssertionError("run_block is mapped with dask's block_id")
    by, bx = (block_id[0], block_id[1]) if task.fuses_time else (block_id[1], block_id[2])
    gathered = gather(blocks, task, by, bx)
    out = run_batches(gathered, task)
    return stitch(out, gathered, task, by, bx)


def gather(blocks: Sequence[np.ndarray], task: BlockTask, by: int, bx: int) -> _Gathered:
    """The windows block ``(by, bx)`` owns, as raw (unnormalised) tensors.

    Per modality: assemble the band blocks into one float32 buffer (NaN at nodata), check
    that its valid values are plausible in the assumed units (:func:`.checks.check_units`), pad
    edge blocks, cut windows as strided views and lay them out as one contiguous
    ``(items, ...)`` tensor, items in ``(t, ky, kx)`` order (per-date) or ``(ky, kx)`` order
    (time-fusing), so batches are plain slices. Also the validity of each output cell,
    counting real (unpadded) pixels only.
    """
    import torch

    py, px = task.plan_y, task.plan_x
    k0y, k1y = py.windows[by]
    k0x, k1x = px.windows[bx]
    nwy, nwx = k1y - k0y, k1x - k0x
    views, valids, footprints = [], [], []
    pos = 0
    for mod in task.modalities:
        g = mod.grid_factor
        n_in = mod.n_bands + mod.has_valid
        buf, flag_np = assemble_block(blocks[pos:pos + n_in], mod.nodata, mod.has_valid,
                                      task.band_mask)
        pos += n_in
        check_units(buf, flag_np, mod.units_check)  # on the valid pixels actually read
        flag_np = domain_valid(buf, flag_np, mod.conversion, task.band_mask)
        (ylo, yhi), (xlo, xhi) = py.edge_pads(by), px.edge_pads(bx)
        buf, flag_np = _pad_edges(buf, flag_np, ((ylo * g, yhi * g), (xlo * g, xhi * g)),
                                  task.edge)
        vals, flag = torch.from_numpy(buf), torch.from_numpy(flag_np)
        wm, cm = py.window * g, py.core * g
        oy, ox = py.window_offset(by) * g, px.window_offset(bx) * g
        views.append(vals[:, :, oy:, ox:].unfold(2, wm, cm).unfold(3, wm, cm)[:, :, :nwy, :nwx])
        valids.append(flag[:, oy:, ox:].unfold(1, wm, cm).unfold(2, wm, cm)[:, :nwy, :nwx])
        cy0, cx0 = oy + py.margin_lo * g, ox + px.margin_lo * g
        ly, lx = nwy * py.core * g, nwx * px.core * g
        core_valid = flag_np[:, cy0:cy0 + ly, cx0:cx0 + lx]
        core_valid = core_valid & _real_mask(py, by, cy0, ly, g)[None, :, None]
        core_valid = core_valid & _real_mask(px, bx, cx0, lx, g)[None, None, :]
        sg = py.stride * g
        cells = core_valid.reshape(buf.shape[0], ly // sg, sg, lx // sg, sg).any(axis=(2, 4))
        footprints.append(cells)
    if task.fuses_time:
        wins = [v.permute(2, 3, 1, 0, 4, 5).reshape(nwy * nwx, *v.shape[1::-1], *v.shape[4:])
                for v in views]  # (items, C, T, W, W)
        flags = [va.permute(1, 2, 0, 3, 4).reshape(nwy * nwx, va.shape[0], *va.shape[3:])
                 for va in valids]  # (items, T, W, W)
    else:
        v, va = views[0], valids[0]
        wins = [v.permute(0, 2, 3, 1, 4, 5).reshape(-1, v.shape[1], *v.shape[4:])]
        flags = [va.reshape(-1, *va.shape[3:])]
    latlon = None
    if task.location is not None and task.fuses_time:
        latlon = torch.from_numpy(window_latlon(task, (k0y, k1y), (k0x, k1x)))
    return _Gathered(wins, flags, footprints, int(wins[0].shape[0]), (nwy, nwx),
                     int(blocks[0].shape[0]), latlon)


def window_latlon(task: BlockTask, wy: tuple[int, int], wx: tuple[int, int]) -> np.ndarray:
    """(lat, lon) in degrees of the windows ``wy`` x ``wx`` (global indices), items in
    ``(ky, kx)`` order: ``(items, 2)`` at window centres (``task.location == "window"``) or
    ``(items, 2, W, W)`` at every reference pixel (``"pixel"``); pixels past the array's
    edge get the coordinates the regular grid extends to."""
    from ..geo import lonlat_transformer

    if task.grid is None or task.crs_wkt is None:
        raise ModelError("the model takes locations, but the task carries no grid and CRS")
    y0, dy, x0, dx = task.grid
    py, px = task.plan_y, task.plan_x
    ky = np.arange(*wy)[:, None]
    kx = np.arange(*wx)[:, None]
    # reference-grid pixel positions (float) of window centres, or of every window pixel
    if task.location == "window":
        oy, ox = np.array([(py.window - 1) / 2.0]), np.array([(px.window - 1) / 2.0])
    else:
        oy, ox = np.arange(py.window, dtype=float), np.arange(px.window, dtype=float)
    iy = (ky * py.core - py.margin_lo) + oy[None, :]
    ix = (kx * px.core - px.margin_lo) + ox[None, :]
    ys, xs = y0 + iy * dy, x0 + ix * dx  # (nwy, p), (nwx, p)
    yy = np.broadcast_to(ys[:, None, :, None], (ys.shape[0], xs.shape[0], ys.shape[1], xs.shape[1]))
    xx = np.broadcast_to(xs[None, :, None, :], yy.shape)
    lon, lat = lonlat_transformer(task.crs_wkt).transform(np.ascontiguousarray(xx),
                                                          np.ascontiguousarray(yy))
    out = np.stack([np.asarray(lat, np.float64), np.asarray(lon, np.float64)], axis=2)
    n = out.shape[0] * out.shape[1]
    if task.location == "window":
        return out.reshape(n, 2)
    return out.reshape(n, 2, py.window, px.window)


def run_batches(g: _Gathered, task: BlockTask) -> np.ndarray:
    """Normalise and embed the gathered windows ``batch_size`` at a time on the model's
    device; ``(items, ow, ow, F)`` float32, the kept (centre) part of each window.

    ``task.batch_size=None`` (automatic) takes the batch size this process chose for the
    model, device, window shape and precision (:mod:`xsky.runtime.batching`, measured on
    the first block), at most the block's windows; on a CUDA out-of-memory error the batch
    is halved and retried, and the smaller size kept. With an explicit batch size an
    out-of-memory error is raised as a :class:`~xsky.exceptions.ModelError` naming it."""
    import torch

    from ..runtime.batching import remember_smaller
    from ..runtime.cache import get_model
    from ..runtime.device import device_lock, resolve_device

    py, s = task.plan_y, task.plan_y.stride
    out_w = py.core // s if task.output == "dense" else 1
    device = resolve_device(task.device)
    model = get_model(task.ref, device)
    lock = device_lock(device)
    amp = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if task.precision == "bfloat16" else contextlib.nullcontext()
    )
    # date tensors once per block, not per batch
    doys = [None if mod.doy is None else torch.as_tensor(mod.doy, dtype=torch.int64).to(device)
            for mod in task.modalities]
    months = [None if mod.month is None else
              torch.as_tensor(mod.month, dtype=torch.int64).to(device) for mod in task.modalities]
    run = _Run(g, task, model, device, amp, doys, months, torch)
    out = np.empty((g.n_items, out_w, out_w, task.feature_dim), np.float32)
    keep = slice(py.margin_lo // s, py.margin_lo // s + out_w) if task.output == "dense" else None
    oom = _oom_error(torch)
    with torch.inference_mode(), (lock or contextlib.nullcontext()):
        auto_key = None
        if task.batch_size is None:
            auto_key, batch = _auto_batch(run)
            batch = max(1, min(batch, g.n_items))
        else:
            batch = task.batch_size
        start = 0
        while start < g.n_items:
            stop = min(start + batch, g.n_items)
            try:
                y = run.forward(slice(start, stop), stop - start)
            except oom as err:
                if auto_key is None:
                    raise ModelError(
                        f"model {task.ref.spec.name!r} ran out of memory on {device} with "
                        f"batch_size={task.batch_size} ({stop - start} windows in the batch); "
                        "pass a smaller batch_size to xsky.embed, or batch_size=None to let "
                        "each worker choose one from its free memory"
                    ) from err
                if batch == 1:
                    raise ModelError(
                        f"model {task.ref.spec.name!r} ran out of memory on {device} with a "
                        "single window (batch_size=None already went down to 1); free memory "
                        "on the device, use a smaller window or device='cpu'"
                    ) from err
                _release_cuda(torch, device)
                batch = remember_smaller(auto_key, batch // 2)
                continue
            y = _check_output(y, stop - start, task, torch).float()
            if keep is not None:
                y = y[:, :, keep, keep]
            out[start:stop] = y.permute(0, 2, 3, 1).cpu().numpy()  # (B, ow, ow, F)
            start = stop
    return out


@dataclass
class _Run:
    """What one block's batches share: the gathered windows, the model on its device, the
    autocast context and the per-date tensors."""

    g: _Gathered
    task: BlockTask
    model: Any
    device: str
    amp: Any
    doys: list[Any]
    months: list[Any]
    torch: Any

    def inputs(self, sel: Any, n: int) -> dict[str, Any]:
        """The model's input dict for windows ``sel`` (a slice or an index tensor, ``n``
        windows), normalised on the device."""
        g, task, device, torch = self.g, self.task, self.device, self.torch
        inputs: dict[str, Any] = {}
        for w, f, doy, month, mod in zip(g.windows, g.flags, self.doys, self.months,
                                          task.modalities, strict=True):
            xb = w[sel].to(device, non_blocking=True)
            xb, vb, bv = _normalise(xb, f[sel].to(device, non_blocking=True), mod, torch,
                                    task.band_mask)
            inputs[mod.name] = xb
            if bv is not None:
                inputs[mod.name + "_band_valid"] = bv
            if task.fuses_time:
                inputs[mod.name + "_valid"] = vb
                if doy is not None:  # None: no time axis, so no date to encode
                    inputs[mod.name + "_doy"] = doy.expand(n, -1)
                if month is not None:
                    inputs[mod.name + "_month"] = month.expand(n, -1)
        if g.latlon is not None:
            inputs["latlon"] = g.latlon[sel].to(device)
        return inputs

    def forward(self, sel: Any, n: int) -> Any:
        """The model's output for windows ``sel``; the call is counted as busy time
        (:func:`xsky.runtime.device.busy_seconds`)."""
        from ..runtime.device import model_busy

        inputs = self.inputs(sel, n)
        with model_busy(self.device):
            with self.amp:
                y = self.model.embed_windows(inputs)
            if self.device.startswith("cuda"):
                self.torch.cuda.synchronize(self.device)
        return y

    def probe(self, n: int) -> int:
        """Peak CUDA memory (bytes) of a forward of ``n`` windows (the block's first ones,
        repeated where it has fewer)."""
        torch, device = self.torch, self.device
        idx = torch.arange(n) % self.g.n_items
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        y = self.forward(idx, n)
        del y
        return max(0, int(torch.cuda.max_memory_allocated(device)) - int(base))

    def window_bytes(self) -> int:
        """Estimated CPU memory of one window's forward (its input and output sizes)."""
        from ..runtime.batching import window_bytes_estimate

        n_in = sum(int(np.prod(w.shape[1:])) for w in self.g.windows)
        task = self.task
        per = task.plan_y.window // task.plan_y.stride
        n_out = task.feature_dim * (per * per if task.output == "dense" else 1)
        return window_bytes_estimate(n_in, n_out)


def _auto_batch(run: _Run) -> tuple[Any, int]:
    """The cache key and this process's automatic batch size for the run's model, device,
    window shapes and precision (measured once per key, :mod:`xsky.runtime.batching`)."""
    from ..runtime.batching import auto_batch_size, batch_key, cached_batch_size

    task, device = run.task, run.device
    key = batch_key(task.ref.key, device, [tuple(w.shape[1:]) for w in run.g.windows],
                    task.precision)
    oom = _oom_error(run.torch)

    def compute() -> int:
        default = task.ref.spec.default_batch_size
        if not device.startswith("cuda"):
            return auto_batch_size(device, default, window_bytes=run.window_bytes())
        try:
            return auto_batch_size(device, default, probe=run.probe)
        except oom:  # not even the probe fits: one window at a time (or a clear error)
            _release_cuda(run.torch, device)
            return 1

    return key, cached_batch_size(key, compute)


def _oom_error(torch: Any) -> type[BaseException]:
    """torch's out-of-memory exception class."""
    cls = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return cast("type[BaseException]", cls)


def _release_cuda(torch: Any, device: str) -> None:
    """Return the caching allocator's unused blocks after an out-of-memory error."""
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def stitch(out: np.ndarray, g: _Gathered, task: BlockTask, by: int, bx: int) -> np.ndarray:
    """Lay the windows' outputs side by side as the block's output pixels; cells with no
    valid input anywhere become NaN; crop to the block's output size."""
    py, px = task.plan_y, task.plan_x
    nwy, nwx = g.n_windows
    out_w = out.shape[1]
    oy_n, ox_n = py.out_chunks[by], px.out_chunks[bx]
    lead = () if task.fuses_time else (g.n_t,)
    out = out.reshape(*lead, nwy, nwx, out_w, out_w, task.feature_dim)
    out = np.moveaxis(out, -3, -4).reshape(*lead, nwy * out_w, nwx * out_w, task.feature_dim)
    if task.fuses_time:
        any_valid = np.logical_or.reduce([f.any(axis=0) for f in g.footprints])
        out[~any_valid] = np.nan
        return out[:oy_n, :ox_n]
    out[~g.footprints[0]] = np.nan
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
    raise ModelError(
        f"model {task.ref.spec.name!r} returned {got} for a batch of {n} windows; expected {want} "
        "as declared by its spec (feature_dim, window, stride, output)"
    )
