"""A text-conditional UNet that works behind a pixel-unshuffle stem: the measured baseline
(`network="unet"`; docs/benchmarks.md says why the DiT in dit.py is the default), and the home of
the layers both networks share (timestep and position embeddings, the FiLM residual block).

The picture is folded into `patch x patch` blocks first (32 px RGB -> 16 x 16 x 12 for patch 2), so
every convolution runs at a quarter of the pixels: on a CPU this is what buys enough training steps
(see docs/benchmarks.md). Text enters twice: the pooled caption vector is added to the timestep
embedding (FiLM in every residual block) and the caption tokens are read by cross-attention at the
attention levels, where learned position embeddings let the image say *where* things are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class UNetConfig:
    image_size: int = 32                 # pixels; the model is built for this size
    channels: int = 3
    patch: int = 2                       # pixel-unshuffle factor of the stem
    widths: tuple[int, ...] = (48, 96, 128)    # channels at each level; each level halves the grid
    blocks: int = 1                      # residual blocks per level, on the way down and again on the way up
    attention_levels: tuple[int, ...] = (1, 2)  # levels with self- and cross-attention
    heads: int = 4
    text_width: int = 128                # width of the text encoder's tokens
    time_width: int = 256                # width of the timestep (+ pooled text) embedding
    dropout: float = 0.0


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of continuous t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels // 4), channels)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; the embedding sets a per-channel scale and shift (FiLM) between them."""

    def __init__(self, c_in: int, c_out: int, emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):  # x: (B, C, H, W); emb: (B, E)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def position_embedding(grid: int, channels: int) -> torch.Tensor:
    """2D sine-cosine features of each cell of a grid x grid map (as in MAE): (grid * grid, channels)."""
    quarter = channels // 4
    freqs = 1.0 / 100 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    parts = [f(c.reshape(-1, 1) * freqs) for c in (xs, ys) for f in (torch.sin, torch.cos)]
    out = torch.cat(parts, dim=1)
    return F.pad(out, (0, channels - out.shape[1]))


class AttentionBlock(nn.Module):
    """Self-attention over the grid, then cross-attention to the caption. Both see where each cell
    is (a learnable embedding that starts as 2D sine-cosine), so a caption's "top left" can be
    matched to a place, not only to a look."""

    def __init__(self, channels: int, text_width: int, heads: int, grid: int):
        super().__init__()
        self.heads = heads
        self.position = nn.Parameter(position_embedding(grid, channels))
        self.norm_self, self.qkv, self.out_self = norm(channels), nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)
        self.norm_cross, self.q = nn.LayerNorm(channels), nn.Linear(channels, channels)
        self.kv = nn.Linear(text_width, 2 * channels)
        self.out_cross = nn.Linear(channels, channels)

    def split(self, x):  # (B, N, C) -> (B, heads, N, C / heads)
        B, N, C = x.shape
        return x.view(B, N, self.heads, C // self.heads).transpose(1, 2)

    def forward(self, x, text, keep):  # x: (B, C, H, W); text: (B, L, T); keep: (B, L) bool
        B, C, H, W = x.shape
        h = self.norm_self(x).flatten(2).transpose(1, 2) + self.position      # (B, HW, C)
        q, k, v = map(self.split, self.qkv(h).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        tokens = x.flatten(2).transpose(1, 2) + self.out_self(a)             # (B, HW, C)
        q = self.split(self.q(self.norm_cross(tokens) + self.position))
        k, v = map(self.split, self.kv(text).chunk(2, dim=-1))               # (B, heads, L, C/heads)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        tokens = tokens + self.out_cross(a.transpose(1, 2).reshape(B, H * W, C))
        return tokens.transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig, in_channels: int | None = None):
        """`in_channels` > config.channels when more maps are stacked on the noisy picture (self-conditioning)."""
        super().__init__()
        self.config = c = config
        if c.image_size % (c.patch * 2 ** (len(c.widths) - 1)):
            raise ValueError(f"image size {c.image_size} is not divisible by patch {c.patch} "
                             f"times 2^{len(c.widths) - 1} downsamplings")
        folded = c.channels * c.patch ** 2
        self.time = nn.Sequential(nn.Linear(c.time_width, c.time_width), nn.SiLU(), nn.Linear(c.time_width, c.time_width))
        self.pooled = nn.Linear(c.text_width, c.time_width)
        self.stem = nn.Conv2d((in_channels or c.channels) * c.patch ** 2, c.widths[0], 3, padding=1)
        grid = c.image_size // c.patch

        def attention(level, width):
            return AttentionBlock(width, c.text_width, c.heads, grid >> level) if level in c.attention_levels else None

        # Each block on the way down hands its output to the mirrored block on the way up.
        self.down, self.downsample, skips = nn.ModuleList(), nn.ModuleList(), []
        width = c.widths[0]
        for level, w in enumerate(c.widths):
            for _ in range(c.blocks):
                self.down.append(nn.ModuleList([ResBlock(width, w, c.time_width, c.dropout), attention(level, w)]))
                width = w
                skips.append(width)
            if level < len(c.widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        deepest = len(c.widths) - 1
        self.mid1 = ResBlock(width, width, c.time_width, c.dropout)
        self.mid_attention = AttentionBlock(width, c.text_width, c.heads, grid >> deepest)
        self.mid2 = ResBlock(width, width, c.time_width, c.dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(c.widths))):
            w = c.widths[level]
            for _ in range(c.blocks):
                self.up.append(nn.ModuleList([ResBlock(width + skips.pop(), w, c.time_width, c.dropout), attention(level, w)]))
                width = w
            if level > 0:
                self.upsample.append(nn.Conv2d(width, width, 3, padding=1))
        self.out_norm, self.out = norm(width), nn.Conv2d(width, folded, 3, padding=1)
        self.initialize()

    def initialize(self):
        """Zero the last layer of every residual branch and the output, so each block starts as
        the identity and the untrained network predicts zero (as DiT and ADM do)."""
        for module in self.modules():
            if isinstance(module, ResBlock):
                nn.init.zeros_(module.conv2.weight), nn.init.zeros_(module.conv2.bias)
            if isinstance(module, AttentionBlock):
                for layer in (module.out_self, module.out_cross):
                    nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)

    def forward(self, x, t, text, keep, pooled, extra=None):
        """x (B, C_in, S, S), t (B,), text (B, L, T), keep (B, L), pooled (B, T) -> (B, 3, S, S).
        `extra` (B, E): more conditioning, added to the timestep embedding (the SR stage's augmentation level)."""
        c = self.config
        emb = self.time(timestep_embedding(t, c.time_width)) + self.pooled(pooled)  # (B, E)
        if extra is not None:
            emb = emb + extra
        h = self.stem(F.pixel_unshuffle(x, c.patch))                                # (B, C0, S/p, S/p)
        skips, blocks, downsamples = [], iter(self.down), iter(self.downsample)
        for level in range(len(c.widths)):
            for _ in range(c.blocks):
                res, attn = next(blocks)
                h = res(h, emb)
                h = attn(h, text, keep) if attn is not None else h
                skips.append(h)
            if level < len(c.widths) - 1:
                h = next(downsamples)(h)
        h = self.mid2(self.mid_attention(self.mid1(h, emb), text, keep), emb)
        blocks, upsamples = iter(self.up), iter(self.upsample)
        for level in reversed(range(len(c.widths))):
            for _ in range(c.blocks):
                res, attn = next(blocks)
                h = res(torch.cat([h, skips.pop()], dim=1), emb)
                h = attn(h, text, keep) if attn is not None else h
            if level > 0:
                h = next(upsamples)(F.interpolate(h, scale_factor=2, mode="nearest"))
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), c.patch)      # (B, 3, S, S)
