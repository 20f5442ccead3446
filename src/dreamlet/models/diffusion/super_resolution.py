"""Text-conditional super-resolution diffusion: the second stage of an Imagen-style cascade
(Saharia et al. 2022; Ho et al. 2022, "Cascaded Diffusion Models"), p(high-res | low-res, caption).

The low-res picture is upsampled (bilinear) to the output size and stacked on the noisy picture as
three more input channels, so every layer of the denoiser sees it in place. Training makes the
low-res picture itself, by box-filtering (area-downsampling) the training picture, and noises it to
a random level first: *noise conditioning augmentation*. In a cascade this stage is fed the base
stage's pictures, not real ones, and a stage trained on clean inputs copies their flaws faithfully;
one trained on noised inputs, and told the level through an embedding added to the timestep's,
learns to redraw detail rather than trust every low-res pixel. Sampling then noises the base
stage's picture to a fixed small level (`aug_level`).

Everything else is the base family's: the DiT with its convolutional stem and head (a UNet with
attention at its lowest resolution only, as in Imagen's super-resolution U-Nets, learned far slower
in a CPU budget: docs/imagen.md), the text encoder (or a frozen pretrained one), the cosine
schedule, and the denoiser layer: v-prediction, classifier-free guidance (only the caption is
dropped; the low-res picture stays in both halves) and thresholding, with the same samplers.

`dreamlet train --model diffusion-sr --base RUN/model --size 64` builds the cascade: the base model
directory is copied in (OUT/base, then MODEL/base), and `dreamlet.load(MODEL)` draws with both stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...text.encoder import TextEncoderConfig, build_text_encoder
from .. import Family, Flag, get_family
from . import TEXT_ENCODER_FLAG, v1_dit
from .denoiser import Condition, Denoiser
from .dit import DiT, DiTConfig, timestep_embedding
from .sampling import SAMPLERS, with_progress
from .schedule import alpha_sigma, sample_timesteps, sampling_times


@dataclass
class SuperResolutionConfig:
    image_size: int = 64              # the output side (`--size`)
    low_size: int = 32                # the input side: the base stage's size (a divisor of image_size)
    dit: DiTConfig = field(default_factory=DiTConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    cond_drop: float = 0.1            # share of captions replaced by the empty one in training (for guidance)
    timesteps: str = "logit_normal"   # training timestep distribution: logit_normal | uniform
    timestep_mean: float = 0.0        # centred: the layout comes with the low-res picture, unlike the base stage's
    aug_max: float = 0.5              # training noises the low-res picture to a level ~ U(0, aug_max) on the
                                      # diffusion schedule (0.5: signal and noise of equal power at the top)
    aug_level: float = 0.2            # the fixed level at sampling (imagen-pytorch's lowres_sample_noise_level)
    sampler: str = "dpmpp_2m"
    steps: int = 20
    guidance: float = 3.0
    dynamic_threshold: float = 0.0    # > 0: dynamic thresholding at this percentile; 0: static clipping (always on,
                                      # it greyed the black shapes background: docs/imagen.md)
    base: str = ""                    # the base stage it was trained with (OUT/base; MODEL/base travels with it)


# CPU presets upsample 32 -> 64 px; "base" is the GPU size for 64 -> 256 (docs/imagen.md: its memory),
# with 8 x 8 patches there so that the transformer sees 32 x 32 tokens and the convolutional stem and
# head, at half the output size, draw the detail.
PRESETS = {
    "tiny": dict(dit=dict(width=32, depth=2, heads=2, conv_width=16, text_width=32, time_width=32),
                 text=dict(width=32, layers=1, heads=2)),
    "small": dict(),
    "base": dict(dit=dict(patch=8, width=384, depth=8, heads=6, conv_width=128, text_width=256, time_width=512),
                 text=dict(width=256, layers=4, heads=8)),
}


class SuperResolutionDiffusion(nn.Module):
    def __init__(self, config: SuperResolutionConfig):
        super().__init__()
        c = config
        if c.low_size < 1 or c.image_size % c.low_size or c.image_size <= c.low_size:
            raise ValueError(f"sizes do not chain: {c.image_size} px is not a larger multiple of low_size "
                             f"{c.low_size} px")
        if c.text.width != c.dit.text_width:
            raise ValueError(f"the text encoder's width {c.text.width} and dit.text_width {c.dit.text_width} differ")
        self.config = c
        self.text_encoder = build_text_encoder(c.text)
        self.net = DiT(c.dit, c.image_size, 3, in_channels=6)  # the noisy picture and the upsampled low-res one
        width = c.dit.time_width
        self.augmentation = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.denoiser = Denoiser(self.net)

    def downsample(self, images: torch.Tensor) -> torch.Tensor:
        """Training's low-res pictures: the box filter (area average) over each factor x factor block."""
        return F.avg_pool2d(images, self.config.image_size // self.config.low_size)

    def condition(self, ids: torch.Tensor, low: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> Condition:
        """What the denoiser reads: the caption (ids (B, L)), and the low-res pictures (B, 3, s, s) noised to
        `level` (B,) on the diffusion schedule, then upsampled to (B, 3, S, S), with that level's embedding.
        Noised at the low size, so the noise is at the scale of the base stage's own errors."""
        a, s = (v.view(-1, 1, 1, 1).to(low.dtype) for v in alpha_sigma(level))
        picture = F.interpolate(a * low + s * noise, size=self.config.image_size, mode="bilinear", align_corners=False)
        text, keep, pooled = self.text_encoder(ids)
        told = self.augmentation(timestep_embedding(level, self.config.dit.time_width))
        return Condition(text, keep, pooled, picture=picture, extra=told)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoising loss for pictures in [-1, 1] at image_size, given their own box-filtered,
        noise-augmented low-res versions; some captions are dropped to the empty one."""
        c, B, device = self.config, images.shape[0], images.device
        drop = torch.rand(B, generator=generator).to(device) < c.cond_drop
        ids = torch.where(drop[:, None], empty_ids.expand_as(ids), ids)
        t = sample_timesteps(B, c.timesteps, generator, device, c.timestep_mean)
        noise = torch.randn(images.shape, generator=generator).to(device)
        low = self.downsample(images)
        level = (c.aug_max * torch.rand(B, generator=generator)).to(device)
        cond = self.condition(ids, low, level, torch.randn(low.shape, generator=generator).to(device))
        return self.denoiser.loss(images, t, noise, cond)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, empty_ids: torch.Tensor, noise: torch.Tensor, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, low: torch.Tensor | None = None,
                 low_noise: torch.Tensor | None = None, progress=None) -> torch.Tensor:
        """Pictures in [-1, 1] (B, 3, S, S) from token ids (B, L), starting noise (B, 3, S, S), the
        low-res pictures `low` (B, 3, s, s) in [-1, 1] and the noise that augments them (B, 3, s, s).
        `progress(i, n)` after step i of n."""
        c = self.config
        if low is None or low_noise is None:
            raise ValueError("the super-resolution stage draws from low-res pictures: give low and low_noise")
        if low.shape[-1] != c.low_size:
            raise ValueError(f"this stage upsamples {c.low_size} px pictures, not {low.shape[-1]} px")
        guidance = c.guidance if guidance is None else guidance
        halves = 1 if guidance == 1 else 2
        if halves == 2:
            ids = torch.cat([ids, empty_ids.expand(len(ids), -1)])
        level = torch.full((halves * len(low),), c.aug_level, device=noise.device)
        low, low_noise = (z.float().repeat(halves, 1, 1, 1) for z in (low, low_noise))
        denoise = self.denoiser.guided(self.condition(ids, low, level, low_noise), guidance, c.dynamic_threshold)
        sample = SAMPLERS[sampler or c.sampler]
        times = sampling_times(steps or c.steps)
        return sample(denoise, noise.float(), times, with_progress(None, progress, len(times) - 1)).clamp(-1, 1)


def prepare(train_config, overrides: dict, device, quiet: bool, saved: "SuperResolutionConfig | None" = None):
    """Before training: with `--base RUN/model` (`--set base=...`), check that the sizes chain, copy
    the base model into OUT/base (the cascade keeps the base it was trained with, whatever happens
    to RUN later) and take low_size from it. Without a base, low_size defaults to half of --size.
    On resume (`saved`), nothing changes."""
    from ...checkpoint import UserError
    if saved is not None:
        return train_config, {}
    size, base = train_config.size, overrides.get("base") or ""
    if base:
        from ...pipeline import Pipeline
        pipeline = Pipeline.load(base)
        if not get_family(pipeline.family).can_draw(pipeline.model.config):
            raise UserError(f"--base {base}: a {pipeline.family} model does not draw pictures from prompts")
        low = pipeline.image_size
        if overrides.get("low_size", low) != low:
            raise UserError(f"--base {base} draws {low} px pictures, not low_size {overrides['low_size']} px")
        if size % low or size <= low:
            raise UserError(f"sizes do not chain: the base model draws {low} px pictures, so --size must be a "
                            f"larger multiple of {low} (such as {2 * low}), not {size}")
        copy = Path(train_config.out) / "base"
        pipeline.save(copy)
        return train_config, overrides | {"base": str(copy.resolve()), "low_size": low}
    low = overrides.get("low_size", size // 2)
    if not isinstance(low, int) or low < 1 or size % low or size <= low:
        raise UserError(f"sizes do not chain: low_size {low} px must divide --size {size} px and be smaller")
    return train_config, overrides | {"low_size": low}


FAMILY = Family(
    "diffusion-sr", SuperResolutionConfig, SuperResolutionDiffusion, PRESETS, prepare=prepare,
    flags=(Flag("base", "base", metavar="MODEL",
                help="the cascade's first stage (RUN/model), whose pictures this model upsamples"), TEXT_ENCODER_FLAG),
    draws=lambda config: bool(config.base), upsamples=True, steps=True,
    does_instead="it upsamples pictures (Pipeline.upsample); train it with --base RUN/model to draw as a cascade",
    version=2, migrations={1: lambda config: v1_dit(config, layout=False)})
