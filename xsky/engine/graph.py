"""Dask glue: chunk on whole windows, borrow halos, and map the block kernel.

Every call passes ``meta``/``dtype``/``chunks`` so nothing, least of all the model, runs
while the graph is built. Arrays are not padded here: the kernel pads the edge blocks
itself, so the data is copied once, into each block's buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np

from ..modalities import Conversion
from .kernel import BlockTask, assemble_block, domain_valid, run_block
from .plan import AxisPlan

__all__ = ["build_embedding", "build_valid_fraction", "check_resources", "chunk_with_halo",
           "restrict_on_cluster"]


def chunk_with_halo(arr: da.Array, py: AxisPlan, px: AxisPlan, g: int,
                    time_chunks: Sequence[int]) -> da.Array:
    """Chunk ``arr`` ``(T, Y, X)`` on whole windows and add each chunk's halo."""
    chunks = (tuple(time_chunks), tuple(c * g for c in py.real_chunks),
              tuple(c * g for c in px.real_chunks))
    arr = arr.rechunk(chunks)
    depth = {0: 0, 1: py.depth * g, 2: px.depth * g}
    if depth[1] or depth[2]:
        arr = da.overlap.overlap(arr, depth=depth, boundary="none")
    return arr


def build_embedding(arrays: Sequence[da.Array], task: BlockTask, time_chunks: Sequence[int],
                    resources: Mapping[str, float] | None = None) -> da.Array:
    """The lazy embedding: ``(T, Yo, Xo, F)`` per-date or ``(Yo, Xo, F)`` time-fusing.

    ``arrays`` holds, per modality, its band arrays then (if any) its valid array, each
    ``(T, Y, X)`` as returned by :func:`chunk_with_halo`. ``resources`` (e.g. ``{"GPU": 1}``)
    annotates the model tasks, and only them; :func:`restrict_on_cluster` makes the
    restriction survive dask's low-level graph optimisation on a ``distributed`` cluster.
    """
    if resources:
        import dask

        with dask.annotate(resources=dict(resources)):
            return build_embedding(arrays, task, time_chunks)
    py, px = task.plan_y, task.plan_x
    feat = (task.feature_dim,)
    out: da.Array
    if task.fuses_time:
        out = da.map_blocks(
            run_block, *arrays, task=task, drop_axis=[0], new_axis=[2],
            chunks=(py.out_chunks, px.out_chunks, feat), dtype=np.float32,
            meta=np.empty((0, 0, 0), dtype=np.float32), token="xsky-embed",
        )
        return out
    out = da.map_blocks(
        run_block, *arrays, task=task, new_axis=[3],
        chunks=(tuple(time_chunks), py.out_chunks, px.out_chunks, feat), dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32), token="xsky-embed",
    )
    return out


# -- resources on a distributed cluster ------------------------------------------------
#
# dask keeps annotations on high-level graph layers, but the low-level optimisation that
# ``client.compute`` runs (linear fusion into a plain dict) drops every layer annotation, so
# ``dask.annotate(resources=...)`` alone never reaches the scheduler. A small scheduler plugin
# therefore restricts, as each graph arrives, the tasks of the registered embedding layers
# (and any fused task that contains one of them) to workers declaring the resources.

_PLUGIN_NAME = "xsky-resources"
_MAX_LAYERS = 4096  # layer names the scheduler remembers (oldest forgotten first)


def _fused_keys(run_spec: Any) -> tuple[Any, ...]:
    """The inner keys of a task that low-level fusion built from several tasks."""
    func = getattr(run_spec, "func", None)
    if getattr(func, "__name__", None) != "_execute_subgraph":
        return ()
    args = getattr(run_spec, "args", ())
    inner = args[0] if args else None
    return tuple(inner) if isinstance(inner, Mapping) else ()


def _key_name(key: Any) -> Any:
    return key[0] if isinstance(key, tuple) and key else key


def _restrictions_for(layers: Mapping[str, dict[str, float]], key: Any, run_spec: Any
                      ) -> dict[str, float] | None:
    found = layers.get(_key_name(key))
    if found is not None:
        return found
    for inner in _fused_keys(run_spec):
        found = layers.get(_key_name(inner))
        if found is not None:
            return found
    return None


def _apply_restrictions(scheduler: Any, layers: Mapping[str, dict[str, float]],
                        keys: Any) -> None:
    for key in keys:
        ts = scheduler.tasks.get(key)
        if ts is None or ts.resource_restrictions:
            continue
        found = _restrictions_for(layers, key, ts.run_spec)
        if found is not None:
            ts.resource_restrictions = dict(found)


def _remember_layer(dask_scheduler: Any = None, *, name: str,
                    resources: dict[str, float]) -> None:
    """Runs on the scheduler: remember that tasks of layer ``name`` need ``resources``."""
    plugin = dask_scheduler.plugins[_PLUGIN_NAME]
    plugin.layers[name] = dict(resources)
    while len(plugin.layers) > _MAX_LAYERS:
        plugin.layers.pop(next(iter(plugin.layers)))


def _plugin() -> Any:
    from distributed.diagnostics.plugin import SchedulerPlugin

    class ResourceRestrictions(SchedulerPlugin):
        """Scheduler plugin: resource restrictions of xsky's model tasks, by layer name."""

        idempotent = True
        name = _PLUGIN_NAME

        def __init__(self) -> None:
            self.layers: dict[str, dict[str, float]] = {}

        def update_graph(self, scheduler: Any, *, tasks: Any = (), **kwargs: Any) -> None:
            if self.layers:
                _apply_restrictions(scheduler, self.layers, tasks)

    return ResourceRestrictions()


def _declared(workers: Mapping[str, Any], resources: Mapping[str, float]) -> list[str]:
    """Addresses of the workers that declare every resource in the needed amount."""
    return [addr for addr, info in workers.items()
            if all(float((info.get("resources") or {}).get(r, 0)) >= float(v)
                   for r, v in resources.items())]


def check_resources(client: Any, resources: Mapping[str, float]) -> None:
    """Refuse ``resources`` no worker of ``client`` declares (the tasks would wait forever).

    Raises
    ------
    ArgumentError
        The client's workers are known and none declares every resource in the amount asked.
    """
    import warnings

    from ..exceptions import ArgumentError

    try:  # by default, recent versions list only the first few workers
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # pragma: no cover - older distributed
        info = client.scheduler_info()
    workers = info.get("workers", {})
    spec = ", ".join(f"{k}={v:g}" for k, v in resources.items())
    if not workers:
        warnings.warn(
            f"resources={dict(resources)} but the connected dask cluster has no worker yet; "
            f"the model tasks will wait until a worker started with `dask worker --resources "
            f"\"{spec}\"` joins", UserWarning, stacklevel=4)
        return
    if _declared(workers, resources):
        return
    seen = sorted({f"{k}={v:g}" for info in workers.values()
                   for k, v in (info.get("resources") or {}).items()})
    raise ArgumentError(
        f"resources={dict(resources)}: none of the {len(workers)} workers of the connected "
        f"dask cluster declares {spec} (they declare {', '.join(seen) or 'no resources'}), so "
        f"the model tasks would wait forever; start workers with `dask worker --resources "
        f"\"{spec}\"` (or LocalCluster(resources={dict(resources)})), or drop resources="
    )


def restrict_on_cluster(out: da.Array, resources: Mapping[str, float], client: Any) -> None:
    """Make the resource restriction of ``out``'s model tasks reach ``client``'s scheduler.

    Registers (once per scheduler) a plugin that restricts the tasks of ``out``'s model
    layer, fused or not, when a graph containing them is submitted. Call
    :func:`check_resources` first.
    """
    client.register_plugin(_plugin(), name=_PLUGIN_NAME)
    client.run_on_scheduler(_remember_layer, name=out.name,
                            resources={k: float(v) for k, v in resources.items()})


def _cell_fraction(*blocks: np.ndarray, nodata: tuple[float | None, ...], has_valid: bool,
                   s: int, any_band: bool = False, conversion: Conversion | None = None
                   ) -> np.ndarray:
    """Fraction of valid pixels in each ``s`` x ``s`` cell of a block."""
    buf, valid = assemble_block(blocks, nodata, has_valid, any_band)
    if conversion is not None:
        valid = domain_valid(buf, valid, conversion, any_band)
    t, h, w = valid.shape
    ny, nx = -(-h // s), -(-w // s)
    pad = ((0, 0), (0, ny * s - h), (0, nx * s - w))
    counts = np.pad(np.ones((h, w), np.float32), pad[1:]).reshape(ny, s, nx, s).sum((1, 3))
    sums = np.pad(valid, pad).reshape(t, ny, s, nx, s).sum((2, 4), dtype=np.float32)
    frac: np.ndarray = (sums / counts).astype(np.float32)
    return frac


def build_valid_fraction(bands: Sequence[da.Array], valid: da.Array | None,
                         nodata: tuple[float | None, ...], cell: int,
                         out_chunks_y: Sequence[int], out_chunks_x: Sequence[int],
                         any_band: bool = False, conversion: Conversion | None = None
                         ) -> da.Array:
    """Lazy ``(T, Yo, Xo)`` fraction of valid input pixels under each output pixel (a pixel
    is valid where all its bands are, or with ``any_band`` where any is, and where the
    ``conversion`` to the model's units is defined)."""
    ref = bands[0]
    ych = tuple(c * cell for c in out_chunks_y)
    xch = tuple(c * cell for c in out_chunks_x)
    # the last chunk holds the remainder of the array
    ych = (*ych[:-1], ref.shape[1] - sum(ych[:-1]))
    xch = (*xch[:-1], ref.shape[2] - sum(xch[:-1]))
    chunks = (ref.chunks[0], ych, xch)
    arrays = [b.rechunk(chunks) for b in bands]
    if valid is not None:
        arrays.append(valid.rechunk(chunks))
    frac: da.Array = da.map_blocks(
        _cell_fraction, *arrays, nodata=nodata, has_valid=valid is not None, s=cell,
        any_band=any_band, conversion=conversion,
        chunks=(ref.chunks[0], tuple(out_chunks_y), tuple(out_chunks_x)), dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32), token="xsky-valid-fraction",
    )
    return frac
