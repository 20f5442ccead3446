"""A small transformer text encoder, trained from scratch together with the image model (or, with
`pretrained` set, a frozen pretrained one behind a learned projection: text/pretrained.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TextEncoderConfig:
    vocab_size: int = 512
    max_length: int = 24   # tokens, [BOS] and [EOS] included (captions here use at most ~16)
    width: int = 128       # token feature size
    layers: int = 2
    heads: int = 4
    pad_id: int = 0
    position_std: float = 0.02 # initial spread of the learned position embeddings
    conv: int = 0              # > 0: a 1-D convolution of this width over neighbouring tokens before the blocks,
                               # so "green circle" is one feature at "circle" from the first step (0: none)
    pretrained: str = ""       # a local transformers model directory (`--text-encoder`): its frozen features,
                               # projected to `width`, replace this encoder; the directory is not copied


class Block(nn.Module):
    """Pre-LayerNorm transformer block with bidirectional self-attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, keep):  # x: (B, L, D); keep: (B, 1, 1, L) True where a real token is
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class TokenConvolution(nn.Conv1d):
    """A 1-D convolution of odd `width` over neighbouring tokens, added to them: each token's feature then
    depends on its neighbours from the first layer on, so "red square" is one feature at "square"."""

    def __init__(self, channels: int, width: int):
        super().__init__(channels, channels, width, padding=width // 2)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) and keep (B, L), True at real tokens -> (B, L, D). Padding reads as zeros, so a
        caption's features do not depend on the captions batched with it."""
        return x + super().forward((x * keep[..., None]).transpose(1, 2)).transpose(1, 2)


class TextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        if config.pretrained:  # a family that builds this class directly has no frozen-encoder path
            raise ValueError("a pretrained text encoder (text.pretrained) is for the diffusion families")
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.width)
        nn.init.normal_(self.token.weight)  # N(0, 1) drawn again, as before: a seed gives the weights it gave
        self.position = nn.Parameter(torch.randn(config.max_length, config.width) * config.position_std)
        self.blocks = nn.ModuleList(Block(config.width, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        if config.conv:
            self.conv = TokenConvolution(config.width, config.conv)

    def forward(self, ids: torch.Tensor):
        """ids (B, L) -> tokens (B, L, D), keep mask (B, L) bool, pooled (B, D) mean of real tokens."""
        keep = ids != self.config.pad_id                                   # (B, L)
        x = self.token(ids) + self.position[: ids.shape[1]]                # (B, L, D)
        if self.config.conv:
            x = self.conv(x, keep)
        for block in self.blocks:
            x = block(x, keep[:, None, None, :])
        x = self.norm(x)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return x, keep, pooled


def read_words(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor,
               heads: int) -> torch.Tensor:
    """Queries (B, N, D) read a caption's words by `heads`-head attention: keys and values (B, 1 + L, D) whose first
    row is a null word ("nothing here", always readable), keep (B, L) True at real tokens -> (B, N, D)."""
    B, N, D = queries.shape
    split = lambda z: z.view(B, z.shape[1], heads, D // heads).transpose(1, 2)  # noqa: E731  (B, heads, *, D / heads)
    mask = F.pad(keep, (1, 0), value=True)[:, None, None, :]
    read = F.scaled_dot_product_attention(split(queries), split(keys), split(values), attn_mask=mask)
    return read.transpose(1, 2).reshape(B, N, D)


def build_text_encoder(config: TextEncoderConfig) -> nn.Module:
    """The encoder a config asks for: trained from scratch, or a frozen pretrained one (`pretrained`)."""
    if config.pretrained:
        from .pretrained import PretrainedTextEncoder
        return PretrainedTextEncoder(config)
    return TextEncoder(config)
