"""A diffusion transformer on image patches (DiT, Peebles & Xie 2023) with text cross-attention
(as PixArt-alpha): every block attends over the whole picture and reads the caption, and every
patch knows where it is, which is what placing objects by a caption's words needs.

The picture is first folded by 2 and passed through a residual conv block at that resolution, and
the transformer's output is unfolded back to it and merged with a skip connection (a small U-ViT /
HDiT-style hybrid): the transformer lays the scene out, the convolutions draw crisp edges inside
each patch. A caller may add a per-patch bias to the tokens before the first block (the text
family's caption layout, preview.py). Why these sizes: docs/benchmarks.md, "diffusion".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...scaling import checkpointed


@dataclass
class DiTConfig:
    patch: int = 4          # each token is a patch x patch square of pixels
    width: int = 128        # token width (128 beat 192 in a 10-minute CPU budget: more steps)
    depth: int = 4          # transformer blocks
    heads: int = 4
    mlp_ratio: float = 3.0
    text_width: int = 128   # width of the caption's token features
    time_width: int = 256   # width of the timestep (+ pooled caption) embedding
    conv_width: int = 64    # channels of the convolutional stem and head, at half the picture's size


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of continuous t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def position_embedding(grid: int, channels: int) -> torch.Tensor:
    """2D sine-cosine features of each cell of a grid x grid map (as in MAE): (grid * grid, channels)."""
    quarter = channels // 4
    freqs = 1.0 / 100 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    cells = torch.arange(grid, dtype=torch.float32)
    ys, xs = torch.meshgrid(cells, cells, indexing="ij")
    out = torch.cat([f(c.reshape(-1, 1) * freqs) for c in (xs, ys) for f in (torch.sin, torch.cos)], dim=1)
    return F.pad(out, (0, channels - out.shape[1]))


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels // 4), channels)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; the embedding sets a per-channel scale and shift (FiLM) between them."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):  # x: (B, C, H, W); emb: (B, E)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


def modulate(x, shift, scale):  # x: (B, N, D); shift, scale: (B, D)
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention to the caption, MLP."""

    def __init__(self, width: int, heads: int, text_width: int, mlp_ratio: float, cond: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm_cross = nn.LayerNorm(width)
        self.q, self.kv = nn.Linear(width, width), nn.Linear(text_width, 2 * width)
        self.proj_cross = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(cond, 6 * width)  # shift, scale, gate for attention and for the MLP

    def split(self, x):  # (B, N, D) -> (B, heads, N, D / heads)
        B, N, D = x.shape
        return x.view(B, N, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, x, c, text, keep):
        """x (B, N, D); c (B, E); text (B, L, T) and keep (B, L) for cross-attention."""
        B, N, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        q, k, v = map(self.split, self.qkv(modulate(self.norm1(x), shift1, scale1)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + gate1[:, None] * self.proj(a.transpose(1, 2).reshape(B, N, D))
        q = self.split(self.q(self.norm_cross(x)))
        k, v = map(self.split, self.kv(text).chunk(2, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.proj_cross(a.transpose(1, 2).reshape(B, N, D))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Pictures (B, in_channels, S, S) -> (B, channels, S, S): stem, patches, transformer blocks, head."""

    def __init__(self, config: DiTConfig, image_size: int, channels: int = 3, in_channels: int | None = None):
        """`in_channels` > `channels` when more maps are stacked on the noisy picture (a super-resolution
        stage's low-res picture)."""
        super().__init__()
        self.config = c = config
        if image_size % c.patch or c.patch % 2:
            raise ValueError(f"image size {image_size} does not split into patches of {c.patch} (an even number)")
        self.grid = image_size // c.patch
        in_channels = in_channels or channels
        self.stem = nn.Conv2d(in_channels * 4, c.conv_width, 3, padding=1)                # on the picture folded by 2
        self.stem_block = ResBlock(c.conv_width, c.conv_width, c.time_width)
        self.embed = nn.Conv2d(c.conv_width, c.width, c.patch // 2, stride=c.patch // 2)
        self.unembed = nn.ConvTranspose2d(c.width, c.conv_width, c.patch // 2, stride=c.patch // 2)
        self.head_block = ResBlock(2 * c.conv_width, c.conv_width, c.time_width)
        self.head = nn.Conv2d(c.conv_width, channels * 4, 3, padding=1)
        self.position = nn.Parameter(position_embedding(self.grid, c.width))
        self.time = nn.Sequential(nn.Linear(c.time_width, c.time_width), nn.SiLU(),
                                  nn.Linear(c.time_width, c.time_width))
        self.pooled = nn.Linear(c.text_width, c.time_width)
        self.blocks = nn.ModuleList(DiTBlock(c.width, c.heads, c.text_width, c.mlp_ratio, c.time_width)
                                    for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.width, elementwise_affine=False)
        self.ada_out = nn.Linear(c.time_width, 2 * c.width)
        self.initialize()

    def initialize(self):
        """Zero every adaLN modulation, the cross-attention outputs and the last layer of each residual
        path (DiT's adaLN-Zero): each block starts as the identity."""
        for layer in [self.ada_out, self.stem_block.conv2, self.head_block.conv2, self.head,
                      *(layer for block in self.blocks for layer in (block.ada, block.proj_cross))]:
            nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)

    def forward(self, x, t, text, keep, pooled, extra=None, bias=None):
        """x (B, C_in, S, S), t (B,), text (B, L, T), keep (B, L), pooled (B, T) -> (B, C, S, S).
        `extra` (B, E): more conditioning, added to the timestep embedding (a super-resolution stage's
        augmentation level); `bias` (B, N, D): added to every patch token before the first block."""
        c, g = self.config, self.grid
        cond = self.time(timestep_embedding(t, c.time_width))                            # (B, E)
        if extra is not None:
            cond = cond + extra
        cond = cond + self.pooled(pooled)
        skip = self.stem_block(self.stem(F.pixel_unshuffle(x, 2)), cond)                 # (B, Cc, S/2, S/2)
        h = self.embed(skip).flatten(2).transpose(1, 2) + self.position                  # (B, N, D)
        if bias is not None:
            h = h + bias
        for block in self.blocks:  # with --checkpointing, recomputed in the backward pass instead of kept
            h = checkpointed(block, h, cond, text, keep)
        shift, scale = self.ada_out(F.silu(cond)).chunk(2, dim=1)
        h = modulate(self.norm_out(h), shift, scale)                                     # (B, N, D)
        h = self.unembed(h.transpose(1, 2).reshape(len(x), c.width, g, g))               # (B, Cc, S/2, S/2)
        h = self.head(F.silu(self.head_block(torch.cat([h, skip], dim=1), cond)))        # (B, 4 C, S/2, S/2)
        return F.pixel_shuffle(h, 2)                                                     # (B, C, S, S)
