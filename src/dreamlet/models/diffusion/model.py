"""Text-conditional diffusion in pixel space: a text encoder trained from scratch, the caption's
preview (preview.py), a diffusion transformer (dit.py), v-prediction on a cosine schedule through the
denoiser layer (denoiser.py), classifier-free guidance, and the samplers (sampling.py).

Why each default: docs/benchmarks.md (the DiT and its sizes: second to fourth rounds; the text
encoder's token convolution and guidance 3: sixth; the caption preview: seventh).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...text.encoder import TextEncoderConfig, build_text_encoder
from .denoiser import Condition, Denoiser
from .dit import DiT, DiTConfig
from .preview import CaptionPreview, PreviewConfig
from .sampling import SAMPLERS, with_progress
from .schedule import alpha_sigma, edit_times, sample_timesteps, sampling_times


@dataclass
class DiffusionConfig:
    image_size: int = 32              # pixels (`--size`); the model is built for this size
    dit: DiTConfig = field(default_factory=DiTConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    # Position embeddings as large as the token embeddings and a convolution over neighbouring tokens:
    # the caption's features then say which colour goes with which shape and which object comes first.
    text: TextEncoderConfig = field(default_factory=lambda: TextEncoderConfig(position_std=1.0, conv=3))
    cond_drop: float = 0.1            # share of captions replaced by the empty one in training (for guidance)
    timesteps: str = "logit_normal"   # training timestep distribution: logit_normal | uniform
    timestep_mean: float = 0.5        # logit_normal's centre in logit space (> 0: more training at high noise,
                                      # which lifted shape accuracy in a short budget)
    sampler: str = "dpmpp_2m"         # default sampler: dpmpp_2m | ddim
    steps: int = 20                   # default sampling steps
    guidance: float = 3.0             # default classifier-free guidance scale (1: none)
    guidance_detail: float = 0.5      # share of the guidance's excess over 1 kept below t = 0.6, once the layout
                                      # is set: 3 -> 2 there (1: constant). Eleventh round: single prompts right
                                      # more often, pairs as before
    dynamic_threshold: float = 0.0    # > 0: Imagen's dynamic thresholding of the clean estimate at this percentile
                                      # of |x0| (e.g. 0.995, for high guidance); 0: static clipping to [-1, 1]
    rerank: int = 4                   # default candidates per picture, the one the model itself finds closest to
                                      # the caption kept (match(); 1: draw one). Tenth round: pairs drawn with
                                      # exactly the two objects asked for far more often


# Named sizes (DiT-style): a tiny one for tests, the default (the config's own defaults, chosen for
# 10 minutes on 2 CPU cores and kept on a GPU), a wider one.
PRESETS = {
    "tiny": dict(dit=dict(width=32, depth=2, heads=2, conv_width=16, text_width=32, time_width=32),
                 preview=dict(rank=4), text=dict(width=32, layers=1, heads=2)),
    "small": dict(),
    "base": dict(dit=dict(width=384, depth=8, heads=6, conv_width=128, text_width=256, time_width=512),
                 text=dict(width=256, layers=4, heads=8)),
}


# Noise levels at which match() compares pictures: t >= 0.5, where a picture's layout is still open (chosen
# on the validation prompts, tenth round: the error at low noise is mostly about detail).
MATCH_TIMES = (0.55, 0.65, 0.75, 0.85, 0.95)


class TextToImageDiffusion(nn.Module):
    bounded = True  # pictures live in [-1, 1]: clean estimates are brought back there while sampling

    def __init__(self, config: DiffusionConfig, size: int | None = None, channels: int = 3):
        """`size` and `channels`: of what it denoises, when not the pictures themselves (latent_diffusion.py)."""
        super().__init__()
        if config.text.width != config.dit.text_width:
            raise ValueError(f"the text encoder's width {config.text.width} and dit.text_width "
                             f"{config.dit.text_width} differ")
        self.config = c = config
        self.text_encoder = build_text_encoder(c.text)
        self.net = DiT(c.dit, size or c.image_size, channels)
        self.preview = (CaptionPreview(c.preview, c.dit.text_width, self.net.grid, c.dit.patch, c.dit.width, channels)
                        if c.preview.rank else None)
        self.denoiser = Denoiser(self.net, c.preview.power if self.preview else 0.0)

    def condition(self, ids: torch.Tensor) -> Condition:
        """Token ids (B, L) -> what the denoiser reads: the caption's features, layout and preview."""
        text, keep, pooled = self.text_encoder(ids)
        bias, preview = self.preview(text, keep, pooled) if self.preview else (None, None)
        return Condition(text, keep, pooled, bias=bias, preview=preview)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoising loss for pictures (B, 3, S, S) in [-1, 1], some captions dropped to the empty one,
        plus the preview's noise-free loss: where a caption puts its objects is learned far sooner so."""
        B, device = images.shape[0], images.device
        drop = torch.rand(B, generator=generator).to(device) < self.config.cond_drop
        ids = torch.where(drop[:, None], empty_ids.expand_as(ids), ids)
        t = sample_timesteps(B, self.config.timesteps, generator, device, self.config.timestep_mean)
        noise = torch.randn(images.shape, generator=generator).to(device)
        cond = self.condition(ids)
        loss = self.denoiser.loss(images, t, noise, cond)
        if cond.preview is None:
            return loss
        return loss + self.config.preview.weight * F.mse_loss(cond.preview.float(), images)

    @torch.no_grad()
    def match(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor | None,
              noise: torch.Tensor) -> torch.Tensor:
        """How well each picture (B, C, S, S) fits its caption in the model's own judgement, higher is
        better: minus its denoising error under the caption at high noise levels, a Monte-Carlo piece of
        the caption-conditional ELBO (as diffusion classifiers use it, Li et al. 2023), where the layout
        and the number of objects are decided. Candidates of one caption should share their `noise`
        (B, C, S, S): their errors then differ by the pictures, not the draw. `empty_ids` is not used (a
        DALL-E prior's match needs it)."""
        cond = self.condition(ids)
        return -sum(self.velocity_error(images, noise, t, cond).pow(2).flatten(1).mean(1) for t in MATCH_TIMES)

    def velocity_error(self, images: torch.Tensor, noise: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        """The denoiser's velocity minus the true one (B, C, S, S) for pictures noised to level `t` with `noise`
        under `cond`: its mean square is the denoising error match() and the bench choosers compare."""
        a, s = alpha_sigma(torch.tensor(t))
        times = torch.full((len(images),), t, device=images.device)
        return self.denoiser.velocity(a * images + s * noise, times, cond).float() - (a * noise - s * images)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, empty_ids: torch.Tensor, noise: torch.Tensor,
                 steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
                 init: torch.Tensor | None = None, strength: float = 1.0, mask: torch.Tensor | None = None,
                 progress=None):
        """Pictures in [-1, 1] (B, 3, S, S) from token ids (B, L) and starting noise (B, 3, S, S);
        `empty_ids` (1 or B, L) take the unconditional branch of guidance. With `init` pictures (B, 3, S, S),
        image-to-image: the start is `init` noised to t = `strength` (edit_start); with a `mask` (B, 1, S, S),
        1 where to draw, inpainting: the rest is kept from `init`. `progress(i, n)` after step i of n."""
        c = self.config
        guidance = c.guidance if guidance is None else guidance
        if guidance != 1:
            ids = torch.cat([ids, empty_ids.expand(len(ids), -1)])
        denoise = self.denoiser.guided(self.condition(ids), guidance, c.dynamic_threshold, self.bounded,
                                       c.guidance_detail)
        times = sampling_times(steps or c.steps) if init is None else edit_times(steps or c.steps, strength)
        x, keep = edit_start(noise.float(), times, init, mask)
        x = SAMPLERS[sampler or c.sampler](denoise, x, times, with_progress(keep, progress, len(times) - 1))
        return x.clamp(-1, 1) if self.bounded else x


def edit_start(noise: torch.Tensor, times: torch.Tensor, init: torch.Tensor | None = None,
               mask: torch.Tensor | None = None):
    """Where sampling starts and what it keeps after each step: plain sampling starts from the noise;
    image-to-image from `init` noised to times[0] (SDEdit); inpainting (a `mask`, 1 where to draw)
    puts `init`, noised to the time just reached with the same noise, back outside the mask after every
    step, so the last step leaves those pixels exactly as they were (RePaint's known region, without
    its resampling)."""
    if init is None:
        return noise, None
    a, s = alpha_sigma(times[0])
    x = noise if times[0] == 1 else (a * init + s * noise).to(noise.dtype)
    if mask is None:
        return x, None

    def keep(i, x, x0):
        a, s = alpha_sigma(times[i + 1])
        return (mask * x + (1 - mask) * (a * init + s * noise)).to(x.dtype)
    return x, keep
