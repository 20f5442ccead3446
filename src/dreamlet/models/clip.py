"""A contrastive text-image model (CLIP, Radford et al. 2021) trained from scratch, for scoring,
reranking and the learned metrics of `dreamlet eval` (no weights can be downloaded here).

Image encoder: a small residual ConvNet that halves the picture until it is 4 x 4, then flattens
it, so where things are survives into the embedding (global average pooling would throw away
"top left" and "to the left of"). Text encoder: the project's own, read at its first token (which
attends over the whole caption, in order) and its mean. InfoNCE in both directions with a learned
temperature; captions repeated within a batch count as matches, not as negatives (small label sets
such as digits and CIFAR repeat captions all the time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Family, removed
from ..text.encoder import TextEncoder, TextEncoderConfig


@dataclass
class ClipConfig:
    image_size: int = 32
    channels: int = 3
    width: int = 32            # channels of the first stage; each stage doubles it, up to max_width
    max_width: int = 256
    embed: int = 128           # the shared embedding size
    temperature: float = 0.07  # initial softmax temperature (learned, kept above 1/100)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)


PRESETS = {
    "tiny": dict(width=8, max_width=32, embed=32, text=dict(width=32, layers=1, heads=2)),
    "small": dict(),
    "base": dict(width=64, max_width=512, embed=512, text=dict(width=256, layers=4, heads=8)),
}


class Stage(nn.Module):
    """Residual conv block, then a strided conv that halves the resolution."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(min(8, channels), channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(min(8, channels), channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.down = nn.Conv2d(channels, out, 4, stride=2, padding=1)

    def forward(self, x):
        return self.down(x + self.block(x))


class ImageEncoder(nn.Module):
    def __init__(self, c: ClipConfig):
        super().__init__()
        stages = int(math.log2(c.image_size // 4))
        if c.image_size < 8 or 4 * 2 ** stages != c.image_size:
            raise ValueError(f"clip needs a power-of-two image size of at least 8, not {c.image_size}")
        widths = [min(c.width * 2 ** i, c.max_width) for i in range(stages + 1)]
        self.stem = nn.Conv2d(c.channels, widths[0], 3, padding=1)
        self.stages = nn.Sequential(*(Stage(a, b) for a, b in zip(widths, widths[1:])))
        self.norm = nn.GroupNorm(min(8, widths[-1]), widths[-1])
        self.out = nn.Linear(widths[-1] * 16, c.embed)

    def forward(self, images):  # (B, 3, S, S) in [-1, 1] -> (B, E)
        return self.out(F.silu(self.norm(self.stages(self.stem(images)))).flatten(1))


class CLIP(nn.Module):

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config.text)
        self.text_out = nn.Linear(2 * config.text.width, config.embed)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / config.temperature)))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> unit vectors (B, E)."""
        return F.normalize(self.image_encoder(images).float(), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> unit vectors (B, E)."""
        tokens, _, pooled = self.text_encoder(ids)
        return F.normalize(self.text_out(torch.cat([tokens[:, 0], pooled], -1)).float(), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100)).exp()

    def loss(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Symmetric InfoNCE; every item with the same caption is a match."""
        logits = self.scale() * self.encode_images(images) @ self.encode_text(ids).T      # (B, B)
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()                       # (B, B)
        targets = same / same.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every picture with every caption: (N_images, N_captions)."""
        return self.encode_images(images) @ self.encode_text(ids).T


def evaluate(args, pipeline) -> tuple[dict, str]:
    """`dreamlet eval` of a CLIP: how good the CLIP itself is, on real held-out pictures."""
    from ..evaluation import evaluate_clip_model
    report = evaluate_clip_model(args.model, args.data, count=3 * args.prompts, distractors=args.distractors)
    return report, (f"R-precision on real held-out pictures: {report['r_precision_real']:.3f} ({args.distractors} "
                    f"distractors); FID real/real {report['fid_real_halves']:.1f}, "
                    f"real/noise {report['fid_real_noise']:.1f}")


FAMILY = Family("clip", ClipConfig, CLIP, PRESETS, draws=False, scores=True,
                does_instead="it scores pictures against captions", evaluate=evaluate, version=2,
                migrations={1: lambda config: removed(config, "text.token_std")})
