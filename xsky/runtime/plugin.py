"""A distributed worker plugin that puts a model into each worker's cache once."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .cache import get_model, put_model

__all__ = ["ModelPreloader", "preload"]


class ModelPreloader(WorkerPlugin):
    """Worker plugin: on setup, build (registry models) or unpickle (others) the model.

    Registered once per model; a model that must be shipped travels to each worker with the
    plugin, never in a task graph.
    """

    idempotent = True

    def __init__(self, payload: bytes | None, ref: Any) -> None:
        self.payload = payload
        self.ref = ref
        # the variant too: the same weights with other options (window=...) are another model
        self.name = f"xsky-model-{ref.spec.name}-{ref.sha256[:16]}-{ref.variant[:12]}"

    def setup(self, worker: Any = None) -> None:
        if self.payload is None:
            get_model(self.ref, "cpu")
            return
        import cloudpickle

        put_model(cloudpickle.loads(self.payload))


def preload(model: Any, client: Any) -> None:
    """Load ``model`` into the cache of every worker of ``client`` (and of future workers).

    Parameters
    ----------
    model
        An :class:`~xsky.models.EmbeddingModel`. Registry models are rebuilt on each worker
        from their name and weights path; other models (e.g. from
        :func:`xsky.models.wrap`) are shipped once, by value.
    client
        A ``distributed.Client``.
    """
    payload = None
    if model.ref.name is None:
        import cloudpickle

        payload = cloudpickle.dumps(model)
    plugin = ModelPreloader(payload, model.ref)
    client.register_plugin(plugin, name=plugin.name)
