"""A plain-torch Swin Transformer V2 with the mmcls 0.25 layout SkySense's HR branch uses.

Parameter names match the official checkpoints (``patch_embed.projection``,
``stages.S.blocks.B.attn.w_msa.cpb_mlp.0``, ``stages.S.downsample.reduction``, ``norm3``, ...).
What matters for matching the official outputs, all reproduced here:

* residual **post-norm** blocks (``x + norm1(attn(x))``), plus ``norm3`` after every
  ``extra_norm_every_n_blocks``-th block of a stage;
* cosine window attention with ``exp(clamp(logit_scale, max=log 100))``, a zero key bias, and
  the continuous position bias ``16 * sigmoid(cpb_mlp(relative_coords_table))``; the
  coordinate table is built in float32 (as the official buffer) and never loaded;
* patch merging through ``nn.Unfold`` channel order (``c*4 + kh*2 + kw``), reduction then norm;
* maps are zero-padded bottom/right to a multiple of the window *before* the cyclic shift and
  the padded tokens are not masked; the shift is switched off for a whole stage whose smaller
  side equals the window, and a side smaller than the window is refused (``pad_small_map=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import DimensionError
from ._skysense_vit import FFN, drop_path, linspace

__all__ = ["SWIN_ARCHS", "SwinTransformerV2"]

#: mmcls Swin-V2 architectures, with SkySense's own ``huge`` entry (8/16/32/64 heads).
SWIN_ARCHS: dict[str, dict[str, object]] = {
    "tiny": {"embed_dims": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
             "extra_norm_every_n_blocks": 0},
    "small": {"embed_dims": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24],
              "extra_norm_every_n_blocks": 0},
    "base": {"embed_dims": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
             "extra_norm_every_n_blocks": 0},
    "large": {"embed_dims": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48],
              "extra_norm_every_n_blocks": 0},
    "huge": {"embed_dims": 352, "depths": [2, 2, 18, 2], "num_heads": [8, 16, 32, 64],
             "extra_norm_every_n_blocks": 6},
}


def _coords_table(window: int, pretrained_window: int) -> torch.Tensor:
    # float32 on purpose: the official buffer is float32, and building it in float64 moves
    # outputs by ~1e-6.
    # Explicit CPU: cheap, exact, and fast even when modules are built under a meta device.
    r = torch.arange(-(window - 1), window, dtype=torch.float32, device="cpu")
    table = torch.stack(torch.meshgrid(r, r, indexing="ij")).permute(1, 2, 0).unsqueeze(0)
    denom = (pretrained_window if pretrained_window > 0 else window) - 1
    table = table / denom * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def _position_index(window: int) -> torch.Tensor:
    idx = torch.arange(window, device="cpu")
    coords = torch.stack(torch.meshgrid(idx, idx, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


class WindowMSAV2(nn.Module):
    """Cosine window attention with continuous position bias (mmcls ``WindowMSAV2``)."""

    def __init__(self, dims: int, window: int, num_heads: int, qkv_bias: bool = True,
                 pretrained_window: int = 0, cpb_hidden: int = 512) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, cpb_hidden), nn.ReLU(inplace=True),
                                     nn.Linear(cpb_hidden, num_heads, bias=False))
        # Rebuilt from the window size, never loaded (the official load hook deletes them).
        self.register_buffer("relative_coords_table", _coords_table(window, pretrained_window),
                             persistent=False)
        self.register_buffer("relative_position_index", _position_index(window),
                             persistent=False)
        self.qkv = nn.Linear(dims, dims * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dims)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dims)) if qkv_bias else None
        self.proj = nn.Linear(dims, dims)

    def position_bias(self) -> torch.Tensor:
        """The (num_heads, N, N) additive bias ``16 * sigmoid(cpb_mlp(table))[index]``."""
        n = self.window * self.window
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        index: Any = self.relative_position_index  # a buffer
        bias = table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        return 16 * torch.sigmoid(bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, n_windows: int
                ) -> torch.Tensor:
        """Attention inside windows ``x`` (B*nW, N, C); ``mask`` (nW, N, N) or None."""
        bw, n, c = x.shape
        h = self.num_heads
        bias = None
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        q = F.normalize(q, dim=-1) * scale
        k = F.normalize(k, dim=-1)
        attn_bias = self.position_bias().to(q.dtype)
        if mask is not None:
            # (B, nW, h, N, d) against (nW, h, N, N): the shift mask is per window position.
            attn_bias = attn_bias[None] + mask[:, None].to(q.dtype)
            shape = (bw // n_windows, n_windows, h, n, c // h)
            out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape),
                                                 v.reshape(shape), attn_mask=attn_bias,
                                                 scale=1.0)
            out = out.reshape(bw, h, n, c // h)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


def _shift_mask(hw: tuple[int, int], window: int, shift: int, device: torch.device
                ) -> torch.Tensor:
    img = torch.zeros(1, *hw, 1, device=device)
    cnt = 0
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in slices:
        for ws in slices:
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = _partition(img, window).view(-1, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def _reverse(windows: torch.Tensor, h: int, w: int, window: int) -> torch.Tensor:
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


class ShiftWindowMSA(nn.Module):
    """(Shifted) window attention over a (B, H*W, C) map (mmcls, ``pad_small_map=False``)."""

    def __init__(self, dims: int, num_heads: int, window: int, shift: int, qkv_bias: bool,
                 pretrained_window: int, drop_path_rate: float) -> None:
        super().__init__()
        self.window = window
        self.shift_size = shift
        self.drop_path_rate = drop_path_rate
        self.w_msa = WindowMSAV2(dims, window, num_heads, qkv_bias, pretrained_window)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        h, w = hw
        win = self.window
        if min(h, w) < win:
            raise DimensionError(
                f"a Swin-V2 stage map of {h}x{w} tokens is smaller than its attention window "
                f"{win}; the HR image must be at least {win * 32} px per side at this depth "
                "(use larger windows)"
            )
        # Official rule: when the smaller side equals the window the shift is switched off.
        shift = 0 if min(h, w) == win else self.shift_size
        x = x.view(b, h, w, c)
        pad_r, pad_b = -w % win, -h % win
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = _shift_mask((hp, wp), win, shift, x.device)
        else:
            mask = None
        windows = _partition(x, win).view(-1, win * win, c)
        out = self.w_msa(windows, mask, (hp // win) * (wp // win))
        x = _reverse(out.view(-1, win, win, c), hp, wp, win)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        return drop_path(x, self.drop_path_rate, self.training)


class SwinBlockV2(nn.Module):
    def __init__(self, dims: int, num_heads: int, window: int, shift: bool, extra_norm: bool,
                 qkv_bias: bool, pretrained_window: int, drop_path_rate: float,
                 eps: float) -> None:
        super().__init__()
        self.attn = ShiftWindowMSA(dims, num_heads, window, window // 2 if shift else 0,
                                   qkv_bias, pretrained_window, drop_path_rate)
        self.norm1 = nn.LayerNorm(dims, eps=eps)
        self.ffn = FFN(dims, 4 * dims)
        self.norm2 = nn.LayerNorm(dims, eps=eps)
        self.norm3 = nn.LayerNorm(dims, eps=eps) if extra_norm else None
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.norm1(self.attn(x, hw))
        x = x + self.norm2(drop_path(self.ffn(x), self.drop_path_rate, self.training))
        if self.norm3 is not None:
            x = self.norm3(x)
        return x


class PatchMerging(nn.Module):
    """2x2 merging in ``nn.Unfold`` channel order; ``reduction`` then ``norm`` when post-norm."""

    def __init__(self, in_dims: int, out_dims: int, post_norm: bool, eps: float) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.reduction = nn.Linear(4 * in_dims, out_dims, bias=False)
        self.norm = nn.LayerNorm(out_dims if post_norm else 4 * in_dims, eps=eps)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        b, _, c = x.shape
        h, w = hw
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # Unfold(2, stride 2) puts channel c, offset (kh, kw) at c*4 + kh*2 + kw.
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(b, (h // 2) * (w // 2), 4 * c)
        if self.post_norm:
            x = self.norm(self.reduction(x))
        else:
            x = self.reduction(self.norm(x))
        return x, (h // 2, w // 2)


class _Stage(nn.Module):
    def __init__(self, in_dims: int, depth: int, num_heads: int, window: int, downsample: bool,
                 post_norm_downsample: bool, extra_norm_every: int, qkv_bias: bool,
                 pretrained_window: int, drop_paths: Sequence[float], eps: float) -> None:
        super().__init__()
        self.out_channels = 2 * in_dims if downsample else in_dims
        self.downsample = (PatchMerging(in_dims, self.out_channels, post_norm_downsample, eps)
                           if downsample else None)
        self.blocks = nn.ModuleList(
            SwinBlockV2(self.out_channels, num_heads, window, shift=i % 2 == 1,
                        extra_norm=bool(extra_norm_every) and (i + 1) % extra_norm_every == 0,
                        qkv_bias=qkv_bias, pretrained_window=pretrained_window,
                        drop_path_rate=drop_paths[i], eps=eps)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, hw: tuple[int, int]
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.downsample is not None:
            x, hw = self.downsample(x, hw)
        for block in self.blocks:
            x = block(x, hw)
        return x, hw


class _SwinPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dims: int, patch: int, eps: float) -> None:
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(in_channels, dims, patch, stride=patch)
        self.norm = nn.LayerNorm(dims, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        ph, pw = -x.shape[-2] % self.patch, -x.shape[-1] % self.patch
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.projection(x)
        hw = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class SwinTransformerV2(nn.Module):
    """Swin Transformer V2 backbone returning the normed maps of ``out_indices`` stages.

    Parameters
    ----------
    embed_dims, depths, num_heads, extra_norm_every_n_blocks
        Architecture (see :data:`SWIN_ARCHS`).
    patch_size, in_channels, window_size
        Patch size, input channels and attention window (one per stage or one for all).
    out_indices
        Stages whose outputs are returned, each through its own ``norm{i}``.
    pretrained_window_sizes
        Per-stage window the position-bias coordinates are normalised by (0: own window).
    post_norm_downsample
        Patch merging applies ``reduction`` before its LayerNorm (SkySense: True).
    qkv_bias, eps, drop_path_rate
        Query/value biases, LayerNorm epsilon, stochastic depth (training only).
    """

    def __init__(self, embed_dims: int = 352, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (8, 16, 32, 64), extra_norm_every_n_blocks: int = 6,
                 *, patch_size: int = 4, in_channels: int = 3,
                 window_size: int | Sequence[int] = 8, out_indices: Sequence[int] = (3,),
                 pretrained_window_sizes: Sequence[int] = (0, 0, 0, 0),
                 post_norm_downsample: bool = True, qkv_bias: bool = True, eps: float = 1e-5,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        n_stages = len(depths)
        windows = ([window_size] * n_stages if isinstance(window_size, int)
                   else list(window_size))
        self.out_indices = tuple(out_indices)
        self.patch_embed = _SwinPatchEmbed(in_channels, embed_dims, patch_size, eps)
        total = sum(depths)
        dpr = linspace(drop_path_rate, total)
        self.stages = nn.ModuleList()
        dims = [embed_dims]
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            stage = _Stage(dims[-1], depth, heads, windows[i], downsample=i > 0,
                           post_norm_downsample=post_norm_downsample,
                           extra_norm_every=extra_norm_every_n_blocks, qkv_bias=qkv_bias,
                           pretrained_window=pretrained_window_sizes[i], drop_paths=dpr[:depth],
                           eps=eps)
            dpr = dpr[depth:]
            self.stages.append(stage)
            dims.append(stage.out_channels)
        self.stage_dims = tuple(dims[1:])
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i + 1], eps=eps))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs (B, C_i, H_i, W_i) for each index in ``out_indices``."""
        x, hw = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(x)
                outs.append(out.transpose(1, 2).reshape(x.shape[0], -1, *hw))
        return outs
