"""Inside-task runtime: model cache, device choice, batching, worker plugin."""

from .cache import clear_cache, get_model, put_model

__all__ = ["clear_cache", "get_model", "put_model"]
