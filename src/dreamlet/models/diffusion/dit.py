"""A diffusion transformer on image patches (DiT, Peebles & Xie 2023) with text cross-attention
(as PixArt-alpha): every block attends over the whole picture and reads the caption, and every
patch knows where it is, which is what placing objects by a caption's words needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .unet import ResBlock, position_embedding, timestep_embedding


@dataclass
class DiTConfig:
    image_size: int = 32
    channels: int = 3
    patch: int = 4          # each token is a patch x patch square of pixels
    width: int = 192
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 3.0
    text_width: int = 128
    time_width: int = 256
    pooled_text: bool = True  # add the pooled caption to the timestep embedding (adaLN); False: text
                              # reaches the picture only through cross-attention (as PixArt-alpha)
    conv_width: int = 64    # > 0: a convolutional stem and head at twice the token resolution (see DiT);
                            # 0: plain linear patch embedding


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
        self.q, self.kv, self.proj_cross = nn.Linear(width, width), nn.Linear(text_width, 2 * width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(cond, 6 * width)  # shift, scale, gate for attention and for the MLP

    def split(self, x):  # (B, N, D) -> (B, heads, N, D / heads)
        B, N, D = x.shape
        return x.view(B, N, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, x, c, text, keep):  # x: (B, N, D); c: (B, E); text: (B, L, T); keep: (B, L)
        B, N, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        q, k, v = map(self.split, self.qkv(modulate(self.norm1(x), shift1, scale1)).chunk(3, dim=-1))
        x = x + gate1[:, None] * self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
        q = self.split(self.q(self.norm_cross(x)))
        k, v = map(self.split, self.kv(text).chunk(2, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.proj_cross(a.transpose(1, 2).reshape(B, N, D))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Patches -> transformer blocks -> patches. With `conv_width`, the picture is first folded by 2
    and passed through a residual conv block at that resolution, and the transformer's output is
    unfolded back to it and merged with a skip connection (a small U-ViT / HDiT-style hybrid):
    the transformer lays the scene out, the convolutions draw crisp edges inside each patch."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = c = config
        if c.image_size % c.patch or (c.conv_width and c.patch % 2):
            raise ValueError(f"image size {c.image_size} does not split into patches of {c.patch}")
        self.grid = c.image_size // c.patch
        folded = c.channels * c.patch ** 2
        if c.conv_width:
            fine = c.channels * 4  # the picture folded by 2
            self.stem = nn.Conv2d(fine, c.conv_width, 3, padding=1)
            self.stem_block = ResBlock(c.conv_width, c.conv_width, c.time_width, 0.0)
            self.embed = nn.Conv2d(c.conv_width, c.width, c.patch // 2, stride=c.patch // 2)
            self.unembed = nn.ConvTranspose2d(c.width, c.conv_width, c.patch // 2, stride=c.patch // 2)
            self.head_block = ResBlock(2 * c.conv_width, c.conv_width, c.time_width, 0.0)
            self.head = nn.Conv2d(c.conv_width, fine, 3, padding=1)
        else:
            self.embed = nn.Linear(folded, c.width)
        self.position = nn.Parameter(position_embedding(self.grid, c.width))
        self.time = nn.Sequential(nn.Linear(c.time_width, c.time_width), nn.SiLU(), nn.Linear(c.time_width, c.time_width))
        self.pooled = nn.Linear(c.text_width, c.time_width) if c.pooled_text else None
        self.blocks = nn.ModuleList(DiTBlock(c.width, c.heads, c.text_width, c.mlp_ratio, c.time_width)
                                    for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.width, elementwise_affine=False)
        self.ada_out = nn.Linear(c.time_width, 2 * c.width)
        if not c.conv_width:
            self.out = nn.Linear(c.width, folded)
        self.initialize()

    def initialize(self):
        """Zero every adaLN modulation, the cross-attention outputs and the output layer (DiT's
        adaLN-Zero): each block starts as the identity."""
        for block in self.blocks:
            for layer in (block.ada, block.proj_cross):
                nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.ada_out.weight), nn.init.zeros_(self.ada_out.bias)
        if not self.config.conv_width:
            nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)
        else:
            for layer in (self.stem_block.conv2, self.head_block.conv2, self.head):
                nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)

    def forward(self, x, t, text, keep, pooled):
        """x (B, 3, S, S), t (B,), text (B, L, T), keep (B, L), pooled (B, T) -> (B, 3, S, S)."""
        c, p, g = self.config, self.config.patch, self.grid
        cond = self.time(timestep_embedding(t, c.time_width))                          # (B, E)
        if self.pooled is not None:
            cond = cond + self.pooled(pooled)
        if c.conv_width:
            skip = self.stem_block(self.stem(F.pixel_unshuffle(x, 2)), cond)           # (B, Cc, S/2, S/2)
            h = self.embed(skip).flatten(2).transpose(1, 2)                            # (B, N, D)
        else:
            h = self.embed(F.pixel_unshuffle(x, p).flatten(2).transpose(1, 2))         # (B, N, D)
        h = h + self.position
        for block in self.blocks:
            h = block(h, cond, text, keep)
        shift, scale = self.ada_out(F.silu(cond)).chunk(2, dim=1)
        h = modulate(self.norm_out(h), shift, scale)                                   # (B, N, D)
        if c.conv_width:
            h = self.unembed(h.transpose(1, 2).reshape(len(x), c.width, g, g))         # (B, Cc, S/2, S/2)
            h = self.head(F.silu(self.head_block(torch.cat([h, skip], dim=1), cond)))  # (B, 12, S/2, S/2)
            return F.pixel_shuffle(h, 2)                                               # (B, 3, S, S)
        h = self.out(h)                                                                # (B, N, 3 p p)
        return F.pixel_shuffle(h.transpose(1, 2).reshape(len(x), -1, g, g), p)          # (B, 3, S, S)
