"""The caption's preview: where a caption puts its objects, learned from the words alone.

Denoising teaches where "a red circle to the left of a blue square" puts its two objects only
through a faint, noisy average; this small module learns it directly. From the caption it makes a
layout code for every patch, a low-rank map (B, N, r) written by two paths:
- the pooled caption through one linear map: a direct path from words like "top left" to places,
  learned in a few hundred steps where cross-attention needs far more;
- each patch's own learned query reading the caption's words (attention with a null word for
  "nothing here"): the patch reads the words that put an object there, in their order.
The code is added to the denoiser's patch tokens (a bias), and it predicts the picture itself, the
preview: the mean of every picture the caption may describe, trained noise-free beside the
denoising loss. The clean estimate then starts from the preview (denoiser.Denoiser): the layout is
there from the first sampling step. docs/benchmarks.md (seventh round) measured it: pair prompts
20-22 -> 38-52 % at the same step count in two seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...text.encoder import read_words


@dataclass
class PreviewConfig:
    rank: int = 32         # width of each patch's layout code; 0: no preview (`--set preview.rank=0`)
    heads: int = 4         # heads of the patches' reading of the words (the text width splits into them)
    weight: float = 1.0    # the preview's loss beside the denoising loss, relative to it
    power: float = 8.0     # the preview's share of the clean estimate at noise level sigma is sigma ** power:
                           # all of it at pure noise, 6 % at t = 0.5 (with 2, shapes failed in one seed)


class CaptionPreview(nn.Module):
    """Caption (text (B, L, T), keep (B, L), pooled (B, T)) -> patch token bias (B, N, D) and the
    preview picture (B, C, S, S), for a grid x grid of patch x patch patches."""

    def __init__(self, config: PreviewConfig, text_width: int, grid: int, patch: int, width: int, channels: int):
        super().__init__()
        if text_width % config.heads:
            raise ValueError(f"the text width {text_width} does not split into preview.heads={config.heads} heads")
        self.config, self.grid, self.patch = config, grid, patch
        r, N = config.rank, grid * grid
        self.pooled = nn.Linear(text_width, N * r)
        self.queries = nn.Parameter(torch.randn(N, text_width) * 0.5)      # each patch's question to the words
        self.kv = nn.Linear(text_width, 2 * text_width)
        self.null = nn.Parameter(torch.zeros(2, text_width))               # a key and value for "nothing here"
        self.read = nn.Linear(text_width, r)
        self.to_tokens = nn.Linear(r, width)
        self.to_picture = nn.Linear(r, channels * patch ** 2)
        nn.init.zeros_(self.to_tokens.weight), nn.init.zeros_(self.to_tokens.bias)  # starts without effect

    def layout(self, text, keep, pooled) -> torch.Tensor:
        """Each patch's layout code (B, N, r)."""
        B, N, heads = len(pooled), self.grid ** 2, self.config.heads
        code = self.pooled(pooled).view(B, N, self.config.rank)                      # (B, N, r)
        k, v = self.kv(text).chunk(2, dim=-1)                                        # (B, L, T)
        k = torch.cat([self.null[0].expand(B, 1, -1), k], 1)                         # (B, 1 + L, T)
        v = torch.cat([self.null[1].expand(B, 1, -1), v], 1)
        a = read_words(self.queries.expand(B, -1, -1), k, v, keep, heads)            # (B, N, T)
        return code + self.read(a)                                                   # (B, N, r)

    def forward(self, text, keep, pooled) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.layout(text, keep, pooled)                                       # (B, N, r)
        picture = self.to_picture(code)                                              # (B, N, C p p)
        g = self.grid
        picture = F.pixel_shuffle(picture.transpose(1, 2).reshape(len(code), -1, g, g), self.patch)  # (B, C, S, S)
        return self.to_tokens(code), picture
