"""ViT-S/16 in plain torch with timm's state-dict key names.

Mirrors ``timm.create_model("vit_small_patch16_224", in_chans=..., num_classes=...)``:
class token, learned position embedding for a 224x224 input, 12 pre-norm blocks
(LayerNorm eps 1e-6, exact GELU), final ``norm`` and a ``head`` on the class token. Key names
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.norm1``/``attn.qkv``/
``attn.proj``/``norm2``/``mlp.fc1``/``mlp.fc2``, ``norm``, ``head``) match timm's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "Mlp", "VisionTransformer", "vit_small_patch16_224"]


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (timm's keys).

    ``keep`` (``(B, N)`` bool, optional) says which tokens take part as keys: a key-padding
    mask for rows of different lengths (Presto, Galileo drop masked tokens this way).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if keep is None else keep[:, None, None, :]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (exact GELU, no layer scale); ``eps`` of the LayerNorms
    (timm's ViT: 1e-6; torch's default 1e-5 for Presto and Galileo) and the attention module
    (``attention(dim, num_heads)``, taking ``(x, keep)``) are the variations the models need."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, eps: float = 1e-6,
                 attention: type[nn.Module] = Attention) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A timm-compatible ViT with a class token and class-token pooling."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.img_size = img_size
        self.num_features = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1,
                                                  embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


def vit_small_patch16_224(in_chans: int = 3, num_classes: int = 1000) -> VisionTransformer:
    """ViT-S/16 (384-d, 12 blocks, 6 heads) for 224x224 inputs, with timm's key names."""
    return VisionTransformer(224, 16, in_chans, num_classes, 384, 12, 6, 4.0)
