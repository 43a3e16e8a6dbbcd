"""``test-tiny``: a small deterministic per-date model for engine tests and demos.

It is independent of SkySense/SatCLIP. A convolutional trunk gives local features at
stride 4, and a window-mean context term makes every output depend on the whole window,
so tests notice a window placed off the global grid.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._base import EmbeddingModel
from ._checkpoint import identity_filter, load_weights
from ._registry import register_model
from .card import ModelCard
from .spec import ModalitySpec, ModelSpec

__all__ = ["CARD", "TinyNet", "checkpoint_filter_fn"]

# Sentinel-2 statistics in reflectance (SkySense's DN statistics / 1e4) for B02, B03, B04, B08.
_MEAN = (0.088430, 0.114416, 0.129747, 0.251776)
_STD = (0.115515, 0.118363, 0.136811, 0.147479)


def _base_spec(window: int = 16, stride: int = 4, feature_dim: int = 16) -> ModelSpec:
    return ModelSpec(
        name="test-tiny",
        modalities=(ModalitySpec("s2", ("B02", "B03", "B04", "B08"), _MEAN, _STD),),
        window=window,
        stride=stride,
        feature_dim=feature_dim,
        fuses_time=False,
        default_batch_size=64,
    )


#: The model card of ``test-tiny``: no released weights (a fixed-seed initialisation).
CARD = ModelCard.from_spec(
    _base_spec(),
    description="deterministic tiny conv net for tests (not a trained model); its weights "
                "are a fixed-seed initialisation, so there are no weight files",
    license="Apache-2.0",
    family="test",
)


def tiny_spec(window: int = 16, stride: int = 4, feature_dim: int = 16) -> ModelSpec:
    return _base_spec(window, stride, feature_dim).replace(meta=CARD.metadata())


#: Weight files of test-tiny are its own ``state_dict``.
checkpoint_filter_fn = identity_filter


class TinyNet(EmbeddingModel):
    def __init__(self, spec: ModelSpec, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        c, f, s = len(spec.bands), spec.feature_dim, spec.stride
        self.stem = nn.Conv2d(c, 16, 3, padding=1, padding_mode="reflect")
        self.down = nn.Conv2d(16, 32, s, stride=s)
        self.mix = nn.Conv2d(32, f, 3, padding=1, padding_mode="reflect")
        self.context = nn.Linear(32, f)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.stem(x))
        h = nn.functional.gelu(self.down(h))
        ctx = self.context(h.mean(dim=(2, 3)))
        # a small window-wide term: every output depends on the whole window, while the
        # local (spectral) features still dominate the embedding
        return self.mix(h) + 0.1 * ctx[:, :, None, None]

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(inputs["s2"])


@register_model("test-tiny", spec=tiny_spec(), card=CARD)
def create_test_tiny(weights: str | None = None, *, window: int = 16, stride: int = 4,
                     feature_dim: int = 16, trust: bool = False) -> TinyNet:
    """Tiny deterministic model: S2 B02/B03/B04/B08, window 16, stride 4, 16 features.

    ``trust=True`` allows full unpickling of a weights file that needs it (only for files
    you trust).
    """
    model = TinyNet(tiny_spec(window=window, stride=stride, feature_dim=feature_dim))
    if weights is not None:
        load_weights(
            model, weights, checkpoint_filter_fn, trust=trust, what="test-tiny weights",
            fix=("Is it a test-tiny state dict (torch.save(model.state_dict(), path))? The "
                 "file must hold every weight of the model."),
            shape_fix=("The weights were saved from a test-tiny with another stride or "
                       "feature_dim; pass the ones they were saved with "
                       "(create_model('test-tiny', weights, stride=..., feature_dim=...))."))
    return model
