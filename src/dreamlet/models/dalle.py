"""DALL-E-style text-to-image: a picture is a grid of discrete codes from an image tokenizer
(`models/vqvae.py`, trained first and frozen), and a transformer prior learns the codes given the
caption (Ramesh et al. 2021).

Two architectures (`arch`):
- `decoder`: one transformer over [caption tokens; image codes] (DALL-E). The caption is a prefix
  every position reads in both directions; codes are causal.
- `encdec`: the project's text encoder reads the caption and an image-code decoder cross-attends to
  it (BART-style, as dalle-mini).
Two ways to decode (`decoder`):
- `autoregressive`: codes in raster order, one at a time, with a KV cache so each step costs one
  token's work instead of the whole prefix's; temperature, top-k and top-p filtering.
- `maskgit`: codes are predicted all at once from a partly masked grid (trained by masked-token
  prediction with a cosine mask ratio) and decoded in a fixed number of parallel steps, keeping the
  most confident ones each step (Chang et al. 2022).
With `plan_cell` (off by default), the prior first draws a colour plan: one token per cell of 2 x 2 codes, the cell's
commonest colour other than the picture's background, read from the picture itself (`colour_plan`). It decides
where each colour goes before any shape is drawn; plan and codes are one sequence, drawn the same way.
Both use classifier-free guidance ("super-conditioning" in dalle-mini): 10 % of captions are dropped
in training, and sampling mixes the conditional and unconditional logits.

Randomness at sampling comes from the picture's own seeded noise (through the normal CDF, one
uniform number per decision), so a seed gives the same picture whatever else is in the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Family, Flag, removed
from ..text.encoder import TextEncoder, TextEncoderConfig, TokenConvolution
from .vqvae import VQConfig, VQModel


@dataclass
class DalleConfig:
    image_size: int = 32
    arch: str = "decoder"            # decoder (DALL-E) | encdec (text encoder + code decoder, dalle-mini)
    decoder: str = "autoregressive"  # autoregressive (raster order, KV cache) | maskgit (parallel, fixed steps)
    width: int = 192
    depth: int = 4
    heads: int = 6
    mlp_ratio: float = 4.0
    plan_cell: int = 0               # > 0: before its codes, the prior draws a colour plan, one token per cell of
                                     # plan_cell x plan_cell codes (colour_plan), so it commits to where each colour
                                     # goes before it draws any shape. 2 lifted held-out shapes, not pairs; on emoji
                                     # it cost FID in 4 minutes and helped in 8 (two seeds each): off, as realism
                                     # at the short budget must not fall (docs/dalle.md)
    plan_levels: int = 3             # the plan's palette: this many levels per channel (levels ** 3 colours)
    prefix_conv: int = 0             # decoder: > 0, a convolution of this width over neighbouring caption tokens, so
                                     # "red" and "square" meet before attention (the diffusion text encoder's `conv`)
    cond_drop: float = 0.1           # share of captions replaced by the empty one in training (for guidance)
    guidance: float = 2.0            # default guidance scale at sampling (1: none)
    temperature: float = 0.7         # below 1 and top-k: fewer stray codes, so fewer broken objects (docs/dalle.md)
    top_k: int = 8                   # keep the k likeliest codes (0: all)
    top_p: float = 1.0               # keep the smallest set of codes with this much probability (1: all)
    steps: int = 8                   # maskgit: parallel decoding steps (autoregressive: one per code)
    rerank: int = 1                  # default candidates per picture (autoregressive only: the one whose codes the
                                     # caption explains best, match); 4 lifted shapes, not emoji (docs/dalle.md)
    tokenizer_share: float = 0.15    # `dreamlet train --model dalle`: the share of the budget for the tokenizer
                                     # (vq passes 28 dB PSNR on shapes in 45 s on one core: docs/dalle.md)
    tokenizer: str = ""              # the image tokenizer's model directory it was trained with (a record)
    vq: VQConfig = field(default_factory=VQConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    @property
    def sampler(self) -> str:
        return "maskgit" if self.decoder == "maskgit" else "autoregressive"


PRESETS = {
    "tiny": dict(width=32, depth=2, heads=2, text=dict(width=32, layers=1, heads=2)),
    "small": dict(),
    "base": dict(width=512, depth=12, heads=8, text=dict(width=256, layers=4, heads=8)),
}
TRAIN_DEFAULTS = dict(lr=1e-3, batch_size=64)


class Attention(nn.Module):
    """Multi-head attention; self-attention appends to a KV cache when given one."""

    def __init__(self, width: int, heads: int, kv_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_width or width, 2 * width)
        self.proj = nn.Linear(width, width)

    def split(self, x):  # (B, N, D) -> (B, heads, N, D / heads)
        B, N, D = x.shape
        return x.view(B, N, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, x, source=None, mask=None, cache: dict | None = None):
        """x (B, N, D) attends to `source` (B, M, K) or, for self-attention, to itself and the cache;
        mask (B or 1, 1, N, M) is True where attending is allowed."""
        B, N, D = x.shape
        q = self.split(self.q(x))
        if cache is not None and "k" in cache and source is not None:   # cross-attention: keys once
            k, v = cache["k"], cache["v"]
        else:
            k, v = map(self.split, self.kv(x if source is None else source).chunk(2, dim=-1))
            if cache is not None and source is None and "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            if cache is not None:
                cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention to the caption, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, text_width: int = 0):
        super().__init__()
        self.norm1, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        if text_width:
            self.norm2, self.cross = nn.LayerNorm(width), Attention(width, heads, text_width)
        hidden = int(mlp_ratio * width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x, mask, text=None, text_mask=None, cache: dict | None = None):
        x = x + self.attn(self.norm1(x), mask=mask, cache=None if cache is None else cache.setdefault("self", {}))
        if text is not None:
            x = x + self.cross(self.norm2(x), text, text_mask, None if cache is None else cache.setdefault("cross", {}))
        return x + self.mlp(self.norm3(x))


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus (top-p, Holtzman et al. 2020) filtering: what is cut gets -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)   # probability of the codes ranked above
        cut = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before > top_p)
        logits = logits.masked_fill(cut, float("-inf"))
    return logits


def colour_plan(images: torch.Tensor, grid: int, levels: int) -> torch.Tensor:
    """Where each colour goes, as grid x grid tokens (B, grid * grid) in [0, levels ** 3), from pictures (B, 3, S, S)
    in [-1, 1]. Pixels are rounded to `levels` per channel; the picture's commonest colour is its background, and a
    cell takes its commonest other colour, or the background where it has none: a small red circle on black is red in
    its cells, however little of them it covers."""
    level = ((images.float().clamp(-1, 1) + 1) / 2 * (levels - 1)).round().long()
    colour = (level[:, 0] * levels + level[:, 1]) * levels + level[:, 2]                       # (B, S, S)
    counts = F.one_hot(colour, levels ** 3).permute(0, 3, 1, 2).float()                       # (B, colours, S, S)
    background = counts.sum((2, 3)).argmax(1)                                                  # (B,)
    cells = F.adaptive_avg_pool2d(counts, grid)
    others = cells.scatter(1, background[:, None, None, None].expand(-1, 1, grid, grid), 0.0).max(1)
    return torch.where(others.values > 0, others.indices, background[:, None, None]).flatten(1)


def pick(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Sample each row of probs (..., V) by inverting its CDF at uniform (...): one number per draw."""
    cdf = probs.float().cumsum(-1)
    picked = torch.searchsorted(cdf, (uniform * cdf[..., -1]).unsqueeze(-1).contiguous()).squeeze(-1)
    return picked.clamp(max=probs.shape[-1] - 1)


class DalleModel(nn.Module):
    def __init__(self, config: DalleConfig):
        super().__init__()
        if config.arch not in ("decoder", "encdec"):
            raise ValueError(f"unknown arch {config.arch!r}; expected decoder or encdec")
        if config.decoder not in ("autoregressive", "maskgit"):
            raise ValueError(f"unknown decoder {config.decoder!r}; expected autoregressive or maskgit")
        if config.prefix_conv and (config.prefix_conv < 0 or config.prefix_conv % 2 == 0):
            raise ValueError(f"prefix_conv must be 0 or an odd width, not {config.prefix_conv}")
        if config.vq.image_size != config.image_size:
            raise ValueError(f"the image tokenizer works at {config.vq.image_size} px, not {config.image_size}")
        self.config = c = config
        self.vq = VQModel(c.vq).requires_grad_(False)       # frozen: trained first, by `--model vqvae`
        if c.plan_cell < 0 or (c.plan_cell and self.vq.grid % c.plan_cell):
            raise ValueError(f"plan_cell must be 0 or divide the code grid's side, not {c.plan_cell}")
        self.plan_grid = self.vq.grid // c.plan_cell if c.plan_cell else 0
        self.plan_tokens = self.plan_grid ** 2               # the colour plan's tokens, drawn first
        self.tokens = self.plan_tokens + self.vq.grid ** 2   # tokens per picture: the plan, then codes in raster order
        # Token ids: the codebook's codes, then the plan's colours (code i is id i, colour k is codebook_size + k),
        # then maskgit's [MASK], which is also the autoregressive start token.
        self.vocabulary = c.vq.codebook_size + (c.plan_levels ** 3 if c.plan_cell else 0)
        self.mask_id = self.vocabulary
        # Embeddings start at the positions' scale (GPT-2's 0.02), not nn.Embedding's 1: at 1 the
        # position is 2 % of each input and the network starts out blind to where it is drawing.
        # Positions are a row part plus a column part, so "at the right" is one column signal in every row.
        self.code = nn.Embedding(self.vocabulary + 1, c.width)
        nn.init.normal_(self.code.weight, std=0.02)
        self.code_row = nn.Parameter(torch.randn(self.vq.grid, 1, c.width) * 0.02)
        self.code_column = nn.Parameter(torch.randn(1, self.vq.grid, c.width) * 0.02)
        if c.plan_cell:
            self.plan_mark = nn.Parameter(torch.randn(c.width) * 0.02)
        text_width = 0
        if c.arch == "decoder":
            self.word = nn.Embedding(c.text.vocab_size, c.width)
            nn.init.normal_(self.word.weight, std=0.02)
            self.word_position = nn.Parameter(torch.randn(c.text.max_length, c.width) * 0.02)
            if c.prefix_conv:
                self.prefix_conv = TokenConvolution(c.width, c.prefix_conv)
        else:
            self.text_encoder = TextEncoder(c.text)
            text_width = c.text.width
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp_ratio, text_width) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, self.vocabulary)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vq.eval()   # the frozen tokenizer never trains (its EMA codebook must not move)
        return self

    def load_first_stage(self) -> None:
        """A fresh run copies the trained image tokenizer's weights in (later loads read them from this
        model's file)."""
        from ..checkpoint import load_tensors
        self.vq.load_state_dict(load_tensors(Path(self.config.tokenizer) / "model.safetensors"))

    # -- the network ----------------------------------------------------------------------------
    def caption(self, ids: torch.Tensor):
        """Token ids (B, L) -> what the code positions read:
        (prefix (B, L, D) or None, text (B, L, T) or None, keep (B, L)).
        Trailing columns that are padding in every row are dropped first: masked anyway, they only cost time."""
        keep = ids != self.config.text.pad_id
        length = int(keep.any(0).nonzero().max()) + 1
        ids, keep = ids[:, :length], keep[:, :length]
        if self.config.arch == "decoder":
            prefix = self.word(ids) + self.word_position[: ids.shape[1]]
            if self.config.prefix_conv:
                prefix = self.prefix_conv(prefix, keep)
            return prefix, None, keep
        text, keep, _ = self.text_encoder(ids)
        return None, text, keep

    def positions(self) -> torch.Tensor:
        """Where each token of a picture stands (tokens, D): a code's row and column; a plan token stands where its
        cell's codes stand (the mean of their rows and of their columns), plus a mark that it is the plan."""
        codes = (self.code_row + self.code_column).flatten(0, 1)
        if not self.plan_tokens:
            return codes
        cell = self.config.plan_cell
        rows = self.code_row.view(self.plan_grid, cell, 1, -1).mean(1)
        columns = self.code_column.view(1, self.plan_grid, cell, -1).mean(2)
        return torch.cat([(rows + columns).flatten(0, 1) + self.plan_mark, codes])

    def code_input(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token ids (B, N) at places start.. of the picture's sequence -> embeddings (B, N, D)."""
        return self.code(codes) + self.positions()[start:start + codes.shape[1]]

    def sequence(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures (B, 3, S, S) in [-1, 1] -> the token ids the prior learns (B, tokens): the colour plan, then the
        tokenizer's codes."""
        codes = self.vq.encode(images).flatten(1)
        if not self.plan_tokens:
            return codes
        plan = colour_plan(images, self.plan_grid, self.config.plan_levels) + self.config.vq.codebook_size
        return torch.cat([plan, codes], 1)

    def only_their_kind(self, logits: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Logits (B, n, vocabulary) for the tokens at places start.. with every other kind cut (-inf): a plan place
        draws a colour, a code place a code."""
        if not self.plan_tokens:
            return logits
        place = torch.arange(start, start + logits.shape[1], device=logits.device)[:, None]
        is_colour = torch.arange(logits.shape[-1], device=logits.device) >= self.config.vq.codebook_size
        return logits.masked_fill((place < self.plan_tokens) != is_colour, float("-inf"))

    def run(self, x, mask, text, keep, cache=None):
        text_mask = None if text is None else keep[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, text, text_mask, None if cache is None else cache.setdefault(i, {}))
        return self.head(self.norm(x))

    def logits(self, ids: torch.Tensor, codes_in: torch.Tensor) -> torch.Tensor:
        """One full pass: caption ids (B, L) and code inputs (B, N) -> logits (B, N, V) for the N codes.
        Autoregressive: codes_in is [start, c_0 .. c_{N-2}] and output i predicts c_i (causal);
        maskgit: codes_in is the grid with some codes masked and output i predicts c_i (bidirectional)."""
        prefix, text, keep = self.caption(ids)
        x = self.code_input(codes_in)
        N, causal = x.shape[1], self.config.decoder == "autoregressive"
        allowed = torch.ones(N, N, dtype=torch.bool, device=x.device)
        if causal:
            allowed = allowed.tril()
        if prefix is None:
            return self.run(x, allowed[None, None], text, keep)
        L = prefix.shape[1]  # the caption is a prefix: it reads itself both ways, codes read all of it
        blind = torch.zeros(len(x), L, N, dtype=torch.bool, device=x.device)  # the caption does not read codes
        mask = torch.cat([torch.cat([keep[:, None, :].expand(-1, L, -1), blind], 2),
                          torch.cat([keep[:, None, :].expand(-1, N, -1), allowed.expand(len(x), -1, -1)], 2)], 1)
        return self.run(torch.cat([prefix, x], 1), mask[:, None], None, keep)[:, L:]

    # -- training ---------------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy of the picture's codes given its caption (dropped to the empty one at cond_drop)."""
        B, device = images.shape[0], images.device
        with torch.no_grad():
            codes = self.sequence(images)                                               # (B, N)
        drop = torch.rand(B, generator=generator).to(device) < self.config.cond_drop
        ids = torch.where(drop[:, None], empty_ids.expand_as(ids), ids)
        if self.config.decoder == "autoregressive":
            start = torch.full((B, 1), self.mask_id, device=device, dtype=codes.dtype)
            logits = self.only_their_kind(self.logits(ids, torch.cat([start, codes[:, :-1]], 1)))
            return F.cross_entropy(logits.flatten(0, 1), codes.flatten())
        # maskgit: mask a cosine-distributed share of the codes (at least one) and predict them
        ratio = torch.cos(0.5 * math.pi * torch.rand(B, 1, generator=generator)).to(device)
        scores = torch.rand(B, self.tokens, generator=generator).to(device)
        masked = scores < ratio
        masked |= scores == scores.min(1, keepdim=True).values
        logits = self.only_their_kind(self.logits(ids, codes.masked_fill(masked, self.mask_id)))
        return F.cross_entropy(logits[masked], codes[masked])

    # -- judging its own pictures ------------------------------------------------------------------
    @property
    def judges_itself(self) -> bool:
        """Only the autoregressive prior gives a picture's likelihood (maskgit predicts codes in no fixed order)."""
        return self.config.decoder == "autoregressive"

    @torch.no_grad()
    def match(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
              noise: torch.Tensor | None = None) -> torch.Tensor:
        """How well each picture (B, 3, S, S) fits its caption in the prior's own judgement, higher is better:
        the log-likelihood of its codes (re-encoded by the tokenizer) under the caption minus that under the
        empty caption, their pointwise mutual information. The likelihood alone prefers plain, predictable
        pictures whatever the caption; the difference counts what the caption explains (docs/dalle.md).
        `noise` is not used (a diffusion model's match needs it)."""
        codes = self.sequence(images)                                                           # (B, N)
        return self.log_likelihood(codes, ids) - self.log_likelihood(codes, empty_ids.expand(len(ids), -1))

    @torch.no_grad()
    def log_likelihood(self, codes: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """log p(codes | caption) (B,) of a picture's token ids (B, N) (sequence()) under caption ids (B, L), in one
        pass."""
        if not self.judges_itself:
            raise ValueError("a maskgit prior cannot judge its own pictures: it gives no likelihood")
        codes_in = torch.cat([torch.full_like(codes[:, :1], self.mask_id), codes[:, :-1]], 1)
        logits = self.only_their_kind(self.logits(ids, codes_in).float())
        return F.log_softmax(logits, -1).gather(-1, codes[..., None]).squeeze(-1).sum(1)

    # -- sampling ---------------------------------------------------------------------------------
    def guided(self, logits: torch.Tensor, guidance: float) -> torch.Tensor:
        """Mix conditional and unconditional halves of the batch: uncond + g (cond - uncond)."""
        if guidance == 1:
            return logits
        cond, uncond = logits.float().chunk(2)
        return uncond + guidance * (cond - uncond)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, empty_ids: torch.Tensor, noise: torch.Tensor, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, use_cache: bool = True) -> torch.Tensor:
        """Pictures in [-1, 1] (B, 3, S, S) from token ids (B, L); each picture's random choices come
        from its own noise (B, 3, S, S)."""
        c = self.config
        guidance = c.guidance if guidance is None else guidance
        if sampler not in (None, c.sampler):
            raise ValueError(f"this model decodes with {c.sampler}, not {sampler}")
        uniform = 0.5 * (1 + torch.erf(noise.flatten(1).float() / math.sqrt(2)))        # (B, 3 S S) in (0, 1)
        both = torch.cat([ids, empty_ids.expand(len(ids), -1)]) if guidance != 1 else ids
        if c.decoder == "maskgit":
            codes = self.decode_maskgit(both, uniform, steps or c.steps, guidance)
        else:
            codes = self.decode_autoregressive(both, uniform, guidance, use_cache)
        codes = codes[:, self.plan_tokens:]   # the plan has done its work: the codes followed it
        return self.vq.decode(codes.reshape(-1, self.vq.grid, self.vq.grid)).clamp(-1, 1)

    def next_code(self, guided: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """Sample from guided logits (..., V) after temperature and top-k / top-p filtering."""
        logits = filter_logits(guided / max(self.config.temperature, 1e-5), self.config.top_k, self.config.top_p)
        return pick(logits.softmax(-1), uniform)

    def decode_autoregressive(self, ids, uniform, guidance, use_cache: bool) -> torch.Tensor:
        """Raster order. With the cache, the caption and each new code pass through the network once;
        without it (for tests and timing), the whole prefix is recomputed at every step."""
        B = len(uniform)
        codes = torch.full((len(ids), 1), self.mask_id, dtype=torch.long, device=ids.device)   # start code
        if not use_cache:
            for i in range(self.tokens):
                logits = self.only_their_kind(self.guided(self.logits(ids, codes)[:, -1:], guidance), i)[:, 0]
                new = self.next_code(logits, uniform[:, i])
                codes = torch.cat([codes, new.repeat(len(ids) // B)[:, None]], 1)
            return codes[:B, 1:]
        cache: dict = {}
        prefix, text, keep = self.caption(ids)
        if prefix is not None:   # the caption first: it reads itself both ways
            L = prefix.shape[1]
            self.run(prefix, keep[:, None, None, :].expand(-1, 1, L, -1), None, keep, cache)
        for i in range(self.tokens):
            x = self.code_input(codes[:, -1:], start=i)
            # a new code reads the caption's real tokens and every code before it (all cached)
            mask = None if prefix is None else torch.cat([keep, torch.ones(len(ids), i + 1, dtype=torch.bool,
                                                                           device=ids.device)], 1)[:, None, None, :]
            logits = self.only_their_kind(self.guided(self.run(x, mask, text, keep, cache)[:, -1:], guidance), i)
            new = self.next_code(logits[:, 0], uniform[:, i])
            codes = torch.cat([codes, new.repeat(len(ids) // B)[:, None]], 1)
        return codes[:B, 1:]

    def decode_maskgit(self, ids, uniform, steps: int, guidance: float) -> torch.Tensor:
        """Start fully masked; each step predicts every masked code, keeps the most confident ones so
        that a cosine share stays masked, and remasks the rest (Chang et al. 2022, Algorithm 1)."""
        B, N = len(uniform), self.tokens
        if uniform.shape[1] < 2 * steps * N:
            raise ValueError("not enough noise for this many maskgit steps at this size")
        codes = torch.full((B, N), self.mask_id, dtype=torch.long, device=ids.device)
        for step in range(steps):
            masked = codes == self.mask_id
            guided = self.only_their_kind(self.guided(self.logits(ids, codes.repeat(len(ids) // B, 1)), guidance))
            sampled = self.next_code(guided, uniform[:, 2 * step * N:(2 * step + 1) * N])      # (B, N)
            probs = filter_logits(guided, self.config.top_k, self.config.top_p).softmax(-1)
            confidence = probs.gather(-1, sampled[..., None]).squeeze(-1).log()
            # a little Gumbel noise, fading over the steps, so early choices are not all alike
            gumbel = -torch.log(-torch.log(uniform[:, (2 * step + 1) * N:(2 * step + 2) * N].clamp(1e-6, 1 - 1e-6)))
            confidence = torch.where(masked, confidence + (1 - (step + 1) / steps) * gumbel, torch.inf)
            still_masked = int(N * math.cos(0.5 * math.pi * (step + 1) / steps))
            codes = torch.where(masked, sampled, codes)
            if still_masked:
                weakest = confidence.topk(still_masked, dim=1, largest=False).indices
                codes = codes.scatter(1, weakest, self.mask_id)
        return codes


def prepare(train_config, overrides: dict, device, quiet: bool, saved: "DalleConfig | None" = None):
    """`dreamlet train --model dalle` is two stages in one command: the image tokenizer first (into
    OUT/tokenizer, `tokenizer_share` of a time budget, or the same number of steps), then the prior
    on its frozen codes. `--set tokenizer=DIR` reuses a tokenizer trained before instead.
    Returns the prior's TrainConfig (its share of the budget) and model overrides (the tokenizer's
    directory and config), or, to train the tokenizer first, the training.FirstStage that ends in them.
    On resume, `saved` is the prior's config: the tokenizer it was trained with stays as it is, and
    the prior gets the same share of --minutes as before."""
    from ..checkpoint import UserError
    from ..training import FirstStage, after_first_stage, first_stage_config
    stage = Path(train_config.out) / "tokenizer"
    if saved is not None:  # the prior has a checkpoint: its frozen tokenizer (a copy is in its weights) stays as it is
        trained = Path(saved.tokenizer).resolve() == (stage / "model").resolve()
        return (after_first_stage(train_config, saved.tokenizer_share) if trained else train_config), {}
    if overrides.get("tokenizer"):
        return train_config, with_tokenizer(overrides, overrides["tokenizer"], train_config.size)
    share = overrides.get("tokenizer_share", DalleConfig.tokenizer_share)
    if not 0 < share < 1:
        raise UserError(f"--set tokenizer_share={share}: expected a number between 0 and 1")
    vq_config = first_stage_config(train_config, "vqvae", stage, share)

    def then(tokenizer):  # the prior takes what the tokenizer left of a time budget
        prior = after_first_stage(train_config, share)
        return prior, with_tokenizer(overrides, tokenizer, prior.size)

    return FirstStage(vq_config, then, "the image tokenizer", "the transformer prior over its codes")


def with_tokenizer(overrides: dict, tokenizer, size: int) -> dict:
    """The prior's overrides with the image tokenizer in model directory `tokenizer`, once checked."""
    from ..checkpoint import UserError, read_json
    from . import get_family
    meta_file = Path(tokenizer) / "config.json"
    if not meta_file.is_file():
        raise UserError(f"--set tokenizer={tokenizer}: not a model directory (no config.json)")
    meta = read_json(meta_file)
    if meta.get("family") != "vqvae":
        raise UserError(f"--set tokenizer={tokenizer}: a {meta.get('family')} model, not an image tokenizer (vqvae)")
    if meta["model"]["image_size"] != size:
        raise UserError(f"the image tokenizer in {tokenizer} works at {meta['model']['image_size']} px, not {size}")
    vq = get_family("vqvae").load_config(meta["model"], meta.get("config_version"))  # saved by any dreamlet
    return overrides | {"tokenizer": str(tokenizer), "vq": vq}


FAMILY = Family(
    "dalle", DalleConfig, DalleModel, PRESETS, train_defaults=TRAIN_DEFAULTS, prepare=prepare,
    flags=(Flag("arch", "arch", choices=("decoder", "encdec"),
                help="one transformer over [caption; image codes] (DALL-E) or text encoder + code decoder "
                     "(dalle-mini)"),
           Flag("decode", "decoder", choices=("autoregressive", "maskgit"),
                help="codes one at a time in raster order, or MaskGIT's parallel decoding in a fixed number of "
                     "steps")),
    image_tokenizer=lambda model: model.vq, version=3,
    migrations={1: lambda config: removed(config, "text.token_std", "vq.text.token_std"),
                2: lambda config: removed(config, "vq.text")})  # its tokenizer's config has no text (vqvae 3)
