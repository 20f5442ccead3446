"""A diffusion transformer on image patches (DiT, Peebles & Xie 2023) with text cross-attention
(as PixArt-alpha): every block attends over the whole picture and reads the caption, and every
patch knows where it is, which is what placing objects by a caption's words needs.

The layout path is dreamlet's own addition: before the first block, the pooled caption writes a
bias on every patch through a low-rank linear map. Cross-attention has to align queries and keys
(a product of two learned maps starting from a closed gate) before "top left" means a place; the
linear path learns it in a few hundred steps, and with it position accuracy went from 85 % to
100 % in the same budget (docs/benchmarks.md).

Two objects and a relation need more (docs/benchmarks.md, seventh round): each patch also reads the
caption's words through a learned query of its own (`layout_input="attention"`), and the layout path
predicts the caption's mean picture, its preview, from the words alone (`layout_preview`), which
the clean estimate then starts from (`preview_residual`). Denoising teaches where a pair's objects
go only through a faint, noisy average; the preview learns it from the pictures themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...scaling import checkpointed
from .unet import ResBlock, position_embedding, timestep_embedding


@dataclass
class DiTConfig:
    image_size: int = 32
    channels: int = 3
    patch: int = 4          # each token is a patch x patch square of pixels
    width: int = 128        # 128 beat 192 in a 10-minute CPU budget: more steps (docs/benchmarks.md)
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 3.0
    text_width: int = 128
    text_length: int = 24   # caption tokens the layout path reads in `tokens` mode
    time_width: int = 256
    pooled_text: bool = True  # add the pooled caption to the timestep embedding (adaLN); False: text
                              # reaches the picture only through cross-attention (as PixArt-alpha)
    conv_width: int = 64    # > 0: a convolutional stem and head at twice the token resolution (see DiT);
                            # 0: plain linear patch embedding
    layout_rank: int = 32   # > 0: the pooled caption also writes a bias on every patch through a rank-r
                            # linear map: a direct path from words like "top left" to places (0: none)
    layout_input: str = "pooled"  # what the layout path reads: pooled (the mean caption vector) | tokens
                                  # (every token in its slot, through a small MLP: word order can matter) |
                                  # attention (pooled, plus each patch's own learned query over the caption's
                                  # tokens: the patch reads the words that put an object there)
    layout_preview: float = 0.0  # > 0: the layout path also predicts the picture from the caption alone (its
                                 # preview: the mean of every picture the caption may describe), with this weight
                                 # in the loss; noise-free, so "a red circle to the left of ..." is learned soon
    preview_residual: bool = False  # the clean estimate is the preview plus what the network adds (needs
                                    # layout_preview): the caption's layout is there from the first sampling step
    preview_power: float = 8.0      # the preview's share of the clean estimate is sigma(t) ** this: all of it at
                                    # pure noise, 6 % at t = 0.5; with 2 (half at t = 0.5) shapes failed in one seed
    text_mode: str = "cross"  # cross: patches read the caption by cross-attention (PixArt-alpha);
                              # joint: caption tokens join the patches in self-attention (U-ViT, SD3)


def modulate(x, shift, scale):  # x: (B, N, D); shift, scale: (B, D)
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention to the caption, MLP."""

    def __init__(self, width: int, heads: int, text_width: int, mlp_ratio: float, cond: int, cross: bool = True):
        super().__init__()
        self.heads, self.cross = heads, cross
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        if cross:
            self.norm_cross = nn.LayerNorm(width)
            self.q, self.kv, self.proj_cross = nn.Linear(width, width), nn.Linear(text_width, 2 * width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(cond, 6 * width)  # shift, scale, gate for attention and for the MLP

    def split(self, x):  # (B, N, D) -> (B, heads, N, D / heads)
        B, N, D = x.shape
        return x.view(B, N, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, x, c, text, keep, mask=None):
        """x (B, N, D); c (B, E); text (B, L, T) and keep (B, L) for cross-attention; mask (B, 1, 1, N)
        hides padding from self-attention when caption tokens are among the N (joint mode)."""
        B, N, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        q, k, v = map(self.split, self.qkv(modulate(self.norm1(x), shift1, scale1)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + gate1[:, None] * self.proj(a.transpose(1, 2).reshape(B, N, D))
        if self.cross:
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

    def __init__(self, config: DiTConfig, in_channels: int | None = None):
        """`in_channels` > config.channels when more maps are stacked on the noisy picture (self-conditioning)."""
        super().__init__()
        self.config = c = config
        if c.image_size % c.patch or (c.conv_width and c.patch % 2):
            raise ValueError(f"image size {c.image_size} does not split into patches of {c.patch}")
        if c.text_mode not in ("cross", "joint"):
            raise ValueError(f"unknown text_mode {c.text_mode!r}; expected cross or joint")
        if c.layout_input not in ("pooled", "tokens", "attention"):
            raise ValueError(f"unknown layout_input {c.layout_input!r}; expected pooled, tokens or attention")
        if c.preview_residual and not (c.layout_preview and c.layout_rank):
            raise ValueError("preview_residual needs a preview: set layout_preview > 0 (and layout_rank > 0)")
        self.grid = c.image_size // c.patch
        folded, in_channels = c.channels * c.patch ** 2, in_channels or c.channels
        if c.conv_width:
            fine = c.channels * 4  # the picture folded by 2
            self.stem = nn.Conv2d(in_channels * 4, c.conv_width, 3, padding=1)
            self.stem_block = ResBlock(c.conv_width, c.conv_width, c.time_width, 0.0)
            self.embed = nn.Conv2d(c.conv_width, c.width, c.patch // 2, stride=c.patch // 2)
            self.unembed = nn.ConvTranspose2d(c.width, c.conv_width, c.patch // 2, stride=c.patch // 2)
            self.head_block = ResBlock(2 * c.conv_width, c.conv_width, c.time_width, 0.0)
            self.head = nn.Conv2d(c.conv_width, fine, 3, padding=1)
        else:
            self.embed = nn.Linear(in_channels * c.patch ** 2, c.width)
        if c.text_mode == "joint":
            self.text_in = nn.Linear(c.text_width, c.width)
        self.position = nn.Parameter(position_embedding(self.grid, c.width))
        if c.layout_rank and c.layout_input == "tokens":
            self.layout_tokens = nn.Sequential(nn.Linear(c.text_length * c.text_width, 4 * c.text_width), nn.GELU())
            self.layout_in = nn.Linear(4 * c.text_width, self.grid ** 2 * c.layout_rank)
        elif c.layout_rank:
            self.layout_in = nn.Linear(c.text_width, self.grid ** 2 * c.layout_rank)
        if c.layout_rank and c.layout_input == "attention":  # per patch: a query, and a null word to read
            self.layout_queries = nn.Parameter(torch.randn(self.grid ** 2, c.text_width) * 0.5)
            self.layout_kv = nn.Linear(c.text_width, 2 * c.text_width)
            self.layout_null = nn.Parameter(torch.zeros(2, c.text_width))  # a key and value for "nothing here"
            self.layout_read = nn.Linear(c.text_width, c.layout_rank)
        if c.layout_rank:
            self.layout_out = nn.Linear(c.layout_rank, c.width)
        if c.layout_rank and c.layout_preview:
            self.layout_preview = nn.Linear(c.layout_rank, c.channels * c.patch ** 2)
        self.time = nn.Sequential(nn.Linear(c.time_width, c.time_width), nn.SiLU(), nn.Linear(c.time_width, c.time_width))
        self.pooled = nn.Linear(c.text_width, c.time_width) if c.pooled_text else None
        self.blocks = nn.ModuleList(DiTBlock(c.width, c.heads, c.text_width, c.mlp_ratio, c.time_width,
                                             cross=c.text_mode == "cross") for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.width, elementwise_affine=False)
        self.ada_out = nn.Linear(c.time_width, 2 * c.width)
        if not c.conv_width:
            self.out = nn.Linear(c.width, folded)
        self.initialize()

    def initialize(self):
        """Zero every adaLN modulation, the cross-attention outputs and the output layer (DiT's
        adaLN-Zero): each block starts as the identity."""
        for block in self.blocks:
            for layer in (block.ada, block.proj_cross) if block.cross else (block.ada,):
                nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.ada_out.weight), nn.init.zeros_(self.ada_out.bias)
        if self.config.layout_rank:
            nn.init.zeros_(self.layout_out.weight), nn.init.zeros_(self.layout_out.bias)
        if not self.config.conv_width:
            nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)
        else:
            for layer in (self.stem_block.conv2, self.head_block.conv2, self.head):
                nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)

    def layout(self, text, keep, pooled):
        """The layout path's low-rank map of the caption, text (B, L, T), keep (B, L), pooled (B, T) -> (B, N, r)."""
        c = self.config
        source = pooled
        if c.layout_input == "tokens":  # (B, L, T) with padding zeroed, in fixed slots
            slots = F.pad(text * keep[..., None], (0, 0, 0, c.text_length - text.shape[1]))[:, :c.text_length]
            source = self.layout_tokens(slots.flatten(1))                           # (B, 4T)
        out = self.layout_in(source).view(len(pooled), self.grid ** 2, c.layout_rank)  # (B, N, r)
        if c.layout_input == "attention":
            B, heads = len(pooled), 4  # every preset's text width splits into 4 heads
            k, v = self.layout_kv(text).chunk(2, dim=-1)                                  # (B, L, T)
            k = torch.cat([self.layout_null[0].expand(B, 1, -1), k], 1)                  # (B, 1 + L, T)
            v = torch.cat([self.layout_null[1].expand(B, 1, -1), v], 1)
            split = lambda z: z.view(B, z.shape[1], heads, -1).transpose(1, 2)          # noqa: E731
            queries = split(self.layout_queries.expand(B, -1, -1))                      # (B, heads, N, T / heads)
            mask = F.pad(keep, (1, 0), value=True)[:, None, None, :]                    # the null word is always there
            a = F.scaled_dot_product_attention(queries, split(k), split(v), attn_mask=mask)
            out = out + self.layout_read(a.transpose(1, 2).reshape(B, self.grid ** 2, -1))  # (B, N, r)
        return out

    def preview(self, layout):
        """The picture the caption alone predicts, its mean over every picture it may describe, from the
        layout path's map (B, N, r): (B, C, S, S)."""
        g, p = self.grid, self.config.patch
        h = self.layout_preview(layout)                                                 # (B, N, C p p)
        return F.pixel_shuffle(h.transpose(1, 2).reshape(len(layout), -1, g, g), p)  # (B, C, S, S)

    def forward(self, x, t, text, keep, pooled, extra=None, layout=None):
        """x (B, C_in, S, S), t (B,), text (B, L, T), keep (B, L), pooled (B, T) -> (B, 3, S, S).
        `extra` (B, E): more conditioning, added to the timestep embedding (the SR stage's augmentation level);
        `layout`: `self.layout(text, keep, pooled)` when the caller already has it."""
        c, p, g = self.config, self.config.patch, self.grid
        cond = self.time(timestep_embedding(t, c.time_width))                          # (B, E)
        if extra is not None:
            cond = cond + extra
        if self.pooled is not None:
            cond = cond + self.pooled(pooled)
        if c.conv_width:
            skip = self.stem_block(self.stem(F.pixel_unshuffle(x, 2)), cond)           # (B, Cc, S/2, S/2)
            h = self.embed(skip).flatten(2).transpose(1, 2)                            # (B, N, D)
        else:
            h = self.embed(F.pixel_unshuffle(x, p).flatten(2).transpose(1, 2))         # (B, N, D)
        h, N, mask = h + self.position, g * g, None
        if c.layout_rank:
            layout = self.layout(text, keep, pooled) if layout is None else layout
            h = h + self.layout_out(layout)                                            # (B, N, D)
        if c.text_mode == "joint":  # caption tokens ride along with the patches, then are dropped
            h = torch.cat([h, self.text_in(text)], dim=1)                              # (B, N + L, D)
            mask = F.pad(keep, (N, 0), value=True)[:, None, None, :]                   # (B, 1, 1, N + L)
        for block in self.blocks:  # with --checkpointing, recomputed in the backward pass instead of kept
            h = checkpointed(block, h, cond, text, keep, mask)
        h = h[:, :N]
        shift, scale = self.ada_out(F.silu(cond)).chunk(2, dim=1)
        h = modulate(self.norm_out(h), shift, scale)                                   # (B, N, D)
        if c.conv_width:
            h = self.unembed(h.transpose(1, 2).reshape(len(x), c.width, g, g))         # (B, Cc, S/2, S/2)
            h = self.head(F.silu(self.head_block(torch.cat([h, skip], dim=1), cond)))  # (B, 12, S/2, S/2)
            return F.pixel_shuffle(h, 2)                                               # (B, 3, S, S)
        h = self.out(h)                                                                # (B, N, 3 p p)
        return F.pixel_shuffle(h.transpose(1, 2).reshape(len(x), -1, g, g), p)          # (B, 3, S, S)
