"""Plain-torch versions of the mmseg/mmcv transformer pieces SkySense is built from.

Module and parameter names follow the official checkpoints (mmcv 1.x / mmseg 0.30), so the
state dicts load without renaming: ``layers.N.ln1``, ``layers.N.attn.attn.in_proj_weight``,
``layers.N.ffn.layers.0.0``, ``patch_embed.projection``, ``porj_linear`` (sic), ...

* :class:`VisionTransformer`: the mmseg ViT used for Sentinel-2 and Sentinel-1 (pre-norm
  layers, CLS token, position embedding resized bicubically to the input grid).
* :class:`FusionEncoder`: the official ``TransformerEncoder`` that fuses per-pixel token
  sequences and returns the CLS token.
* :class:`UPHead`: 1x1 convolution + ``PixelShuffle``.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`: the same
math as ``nn.MultiheadAttention`` (scale ``1/sqrt(head_dim)``), with an optional key mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FFN", "FusionEncoder", "MultiheadAttention", "TransformerEncoderLayer", "UPHead",
           "VisionTransformer", "drop_path", "linspace", "resize_pos_embed"]


def linspace(stop: float, n: int) -> list[float]:
    """``torch.linspace(0, stop, n).tolist()`` in plain Python (works under a meta device)."""
    if n <= 1:
        return [0.0] * n
    return [stop * i / (n - 1) for i in range(n)]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole residual branches per sample (identity in eval mode)."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class FFN(nn.Module):
    """mmcv ``FFN`` with two fully connected layers (``layers.0.0`` and ``layers.1``)."""

    def __init__(self, dims: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dims, hidden), nn.GELU(), nn.Dropout(drop)),
            nn.Linear(hidden, dims),
            nn.Dropout(drop),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _MHAParams(nn.Module):
    """Holds ``nn.MultiheadAttention``'s parameters under its names (``in_proj_weight``, ...)."""

    def __init__(self, dims: int, bias: bool) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dims, dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dims)) if bias else None
        self.out_proj = nn.Linear(dims, dims, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)


class MultiheadAttention(nn.Module):
    """Batch-first self-attention with the parameter layout of mmcv's ``MultiheadAttention``.

    Parameters
    ----------
    dims, num_heads
        Width and number of heads.
    qkv_bias
        Whether the input and output projections have biases.
    attn_drop
        Attention dropout (training only).
    """

    def __init__(self, dims: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0) -> None:
        super().__init__()
        if dims % num_heads:
            raise ValueError(f"embed_dims {dims} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.attn = _MHAParams(dims, qkv_bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                n_queries: int | None = None) -> torch.Tensor:
        """Self-attention over ``x`` (B, L, C).

        ``key_mask`` is bool (B, L): True where a key may be attended to. A masked key gets
        exactly zero attention weight. With ``n_queries`` only the first ``n_queries`` tokens
        are updated (and returned): the others still act as keys and values.
        """
        b, n, c = x.shape
        h = self.num_heads
        w, bias = self.attn.in_proj_weight, self.attn.in_proj_bias
        if n_queries is None:
            qkv = F.linear(x, w, bias)
            q, k, v = qkv.view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
            nq = n
        else:
            nq = n_queries
            q = F.linear(x[:, :nq], w[:c], None if bias is None else bias[:c])
            q = q.view(b, nq, h, c // h).transpose(1, 2)
            kv = F.linear(x, w[c:], None if bias is None else bias[c:])
            k, v = kv.view(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.attn.out_proj(out.transpose(1, 2).reshape(b, nq, c))


class TransformerEncoderLayer(nn.Module):
    """mmseg's pre-norm layer: ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))``."""

    def __init__(self, dims: int, num_heads: int, hidden: int, *, qkv_bias: bool = True,
                 eps: float = 1e-5, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dims, eps=eps)
        self.attn = MultiheadAttention(dims, num_heads, qkv_bias, attn_drop)
        self.ln2 = nn.LayerNorm(dims, eps=eps)
        self.ffn = FFN(dims, hidden, drop)
        self.drop_path_rate = drop_path_rate
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                cls_only: bool = False) -> torch.Tensor:
        """Update tokens ``x`` (B, L, C); with ``cls_only`` only the first one, (B, 1, C)."""
        p, tr = self.drop_path_rate, self.training
        attn = self.attn(self.ln1(x), key_mask, 1 if cls_only else None)
        x = (x[:, :1] if cls_only else x) + drop_path(self.drop(attn), p, tr)
        return x + drop_path(self.ffn(self.ln2(x)), p, tr)


def encoder_layers(num_layers: int, embed_dims: int, num_heads: int, mlp_ratio: float,
                   qkv_bias: bool, eps: float, drop_path_rate: float) -> nn.ModuleList:
    """Pre-norm layers with drop-path rising linearly to ``drop_path_rate`` (mmseg style)."""
    dpr = linspace(drop_path_rate, num_layers)
    return nn.ModuleList(
        TransformerEncoderLayer(embed_dims, num_heads, int(mlp_ratio * embed_dims),
                                qkv_bias=qkv_bias, eps=eps, drop_path_rate=dpr[i])
        for i in range(num_layers)
    )


def resize_pos_embed(pos_embed: torch.Tensor, out_hw: tuple[int, int], pos_hw: tuple[int, int],
                     mode: str = "bicubic") -> torch.Tensor:
    """Resize a (1, 1 + gh*gw, C) position embedding (CLS entry first) to another grid.

    Matches mmseg's ``VisionTransformer.resize_pos_embed``: the CLS entry is kept and the
    grid part is interpolated with ``align_corners=False`` and no antialiasing.
    """
    gh, gw = pos_hw
    cls_pos = pos_embed[:, :1]
    grid = pos_embed[:, -gh * gw:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    align = False if mode in ("bilinear", "bicubic") else None
    grid = F.interpolate(grid, size=tuple(out_hw), mode=mode, align_corners=align)
    return torch.cat([cls_pos, grid.flatten(2).transpose(1, 2)], dim=1)


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dims: int, patch: int, norm_eps: float | None) -> None:
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(in_channels, dims, patch, stride=patch)
        self.norm = nn.LayerNorm(dims, eps=norm_eps) if norm_eps is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        # mmcv AdaptivePadding('corner'): zero-pad bottom/right to a multiple of the patch.
        ph = -x.shape[-2] % self.patch
        pw = -x.shape[-1] % self.patch
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.projection(x)
        hw = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw


class VisionTransformer(nn.Module):
    """The mmseg ``VisionTransformer`` as SkySense configures it for Sentinel-2/-1.

    Parameters
    ----------
    img_size
        Training image size (height, width); fixes the stored position-embedding grid
        ``img_size // patch_size``.
    patch_size, in_channels, embed_dims, num_layers, num_heads, mlp_ratio, qkv_bias
        Official meanings.
    with_cls_token
        Keep the CLS token in the sequence through the layers (SkySense v1 default).
    final_norm, patch_norm
        Extra LayerNorms after the last layer / after the patch embedding.
    eps
        LayerNorm epsilon (1e-5 in SkySense v1, 1e-6 in SkySense++).
    interpolate_mode
        How the position embedding is resized to the input grid.
    drop_path_rate
        Stochastic depth of the last layer (training only).
    """

    def __init__(self, img_size: tuple[int, int] = (64, 64), patch_size: int = 4,
                 in_channels: int = 10, embed_dims: int = 1024, num_layers: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4, qkv_bias: bool = True, *,
                 with_cls_token: bool = True, final_norm: bool = False,
                 patch_norm: bool = False, eps: float = 1e-5,
                 interpolate_mode: str = "bicubic", drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.with_cls_token = with_cls_token
        self.interpolate_mode = interpolate_mode
        self.pos_grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.patch_embed = _PatchEmbed(in_channels, embed_dims, patch_size,
                                       eps if patch_norm else None)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.pos_grid[0] * self.pos_grid[1] + 1, embed_dims))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layers = encoder_layers(num_layers, embed_dims, num_heads, mlp_ratio, qkv_bias, eps,
                                     drop_path_rate)
        self.ln1 = nn.LayerNorm(embed_dims, eps=eps) if final_norm else None

    def _pos(self, hw: tuple[int, int], n_tokens: int) -> torch.Tensor:
        pos = self.pos_embed
        # As mmseg: resize only when the token counts differ (a same-count grid of another
        # shape uses the stored order unchanged).
        if n_tokens != pos.shape[1]:
            return resize_pos_embed(pos, hw, self.pos_grid, self.interpolate_mode)
        return pos

    def forward(self, x: torch.Tensor, return_layers: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Features of images ``x`` (B, C, H, W).

        Returns
        -------
        torch.Tensor or (torch.Tensor, list of torch.Tensor)
            The last layer as (B, D, H/p, W/p) (CLS dropped); with ``return_layers`` also
            every layer's output in the same layout.
        """
        b = x.shape[0]
        tokens, hw = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = tokens + self._pos(hw, tokens.shape[1])
        if not self.with_cls_token:
            tokens = tokens[:, 1:]
        layers = []
        for i, layer in enumerate(self.layers):
            tokens = layer(tokens)
            if self.ln1 is not None and i == len(self.layers) - 1:
                tokens = self.ln1(tokens)
            if return_layers:
                layers.append(self._to_map(tokens, hw))
        out = self._to_map(tokens, hw)
        return (out, layers) if return_layers else out

    def _to_map(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.with_cls_token:
            tokens = tokens[:, 1:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *hw)


class UPHead(nn.Module):
    """The official ``UPHead``: a 1x1 convolution to ``out_dim * up_scale**2`` channels, then
    ``PixelShuffle(up_scale)`` (channel ``c*s*s + i*s + j`` goes to pixel ``(s*y+i, s*x+j)``)."""

    def __init__(self, in_dim: int, out_dim: int, up_scale: int = 4) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Conv2d(in_dim, out_dim * up_scale**2, 1),
                                     nn.PixelShuffle(up_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x)


class FusionEncoder(nn.Module):
    """The official fusion ``TransformerEncoder``: ``porj_linear`` (C4 -> D), CLS token, pre-norm
    layers, no position embedding and no final norm; returns the CLS output.

    Parameters
    ----------
    input_dims, embed_dims, num_layers, num_heads, mlp_ratio, qkv_bias
        Official meanings (``input_dims`` is the Swin stage-4 width, 2816 for SkySense).
    eps
        LayerNorm epsilon.
    drop_path_rate
        Stochastic depth of the last layer (training only).
    """

    def __init__(self, input_dims: int = 2816, embed_dims: int = 1024, num_layers: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4, qkv_bias: bool = True, *,
                 eps: float = 1e-5, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.porj_linear = nn.Linear(input_dims, embed_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layers = encoder_layers(num_layers, embed_dims, num_heads, mlp_ratio, qkv_bias, eps,
                                     drop_path_rate)

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """CLS output (B, D) for token sequences ``tokens`` (B, L, input_dims).

        ``key_mask`` (bool (B, L), True = attend) leaves tokens out of the attention; the CLS
        token is always attended.
        """
        return self.encode(self.porj_linear(tokens), key_mask)

    def encode(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLS output (B, D) for tokens already projected by ``porj_linear`` (B, L, D).

        The projection acts on each token alone, so callers may project each modality's
        tokens separately (and before concatenating) without changing the result.
        """
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if key_mask is not None:
            key_mask = torch.cat([key_mask.new_ones(key_mask.shape[0], 1), key_mask], dim=1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # Only the CLS output is used: the last layer updates the CLS token alone.
            x = layer(x, key_mask, cls_only=i == last)
        return x[:, 0]
