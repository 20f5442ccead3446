"""Text-conditional diffusion (Imagen-style, in pixel space): text encoder + UNet, v-prediction,
classifier-free guidance (Ho & Salimans 2022), and the pipeline that turns token ids into pictures.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...text.encoder import TextEncoderConfig, build_text_encoder
from .sampling import SAMPLERS, dynamic_threshold
from .schedule import alpha_sigma, sample_timesteps, sampling_times
from .dit import DiT, DiTConfig
from .unet import UNet, UNetConfig


@dataclass
class DiffusionConfig:
    network: str = "dit"              # the denoiser: dit (default) | unet (the ablation baseline)
    unet: UNetConfig = field(default_factory=UNetConfig)
    # Each patch reads the caption's words, and the clean estimate starts from the caption's preview: pair
    # prompts 20-22 -> 38-52 % at the same step count in two seeds (docs/benchmarks.md, seventh round).
    # DiTConfig's own defaults stay off, so model directories trained before load as they were trained.
    dit: DiTConfig = field(default_factory=lambda: DiTConfig(layout_input="attention", layout_preview=1.0,
                                                             preview_residual=True))
    # Position embeddings as large as the token embeddings and a convolution over neighbouring tokens:
    # the caption's features then say which colour goes with which shape and which object comes first,
    # which pair prompts need (pairs 10 -> 18-24 % at the same step count: docs/benchmarks.md, sixth round).
    text: TextEncoderConfig = field(default_factory=lambda: TextEncoderConfig(position_std=1.0, conv=3))
    cond_drop: float = 0.1            # share of captions replaced by the empty one in training (for CFG)
    timesteps: str = "logit_normal"   # training timestep distribution: logit_normal | uniform
    timestep_mean: float = 0.5        # logit_normal's centre in logit space (> 0: more training at high noise,
                                      # which lifted shape accuracy in a short budget: docs/benchmarks.md)
    self_condition: bool = False      # feed the network its previous estimate of the clean picture
                                      # (Chen et al. 2022, "Analog Bits"): half of training, every sampling step
    sampler: str = "dpmpp_2m"         # default sampler: dpmpp_2m | ddim
    steps: int = 20                   # default sampling steps
    guidance: float = 3.0             # default classifier-free guidance scale (1 = no guidance); 3 beat 5 on
                                      # held-out singles by 10 points with the sixth round's text encoder
    guidance_schedule: str = "constant"  # constant | linear: the scale grows from 1 at pure noise to 2 g - 1 at
                                         # the end, the same on average (Wang et al. 2024)
    dynamic_threshold: float = 0.995  # Imagen's dynamic thresholding of the clean estimate at this percentile
                                      # of |x0| (sampling.dynamic_threshold; 0: static clipping) ...
    dynamic_threshold_above: float = 5.0  # ... applied when guidance is above this: it matters where guided
                                          # estimates overshoot; at the default 5 and below sampling stays
                                          # statically clipped, as every figure in docs/benchmarks.md was drawn

    @property
    def denoiser(self) -> UNetConfig | DiTConfig:
        if self.network not in ("unet", "dit"):
            raise ValueError(f"unknown network {self.network!r}; expected unet or dit")
        return getattr(self, self.network)

    @property
    def image_size(self) -> int:
        return self.denoiser.image_size


# Named sizes (DiT-style): a tiny one for tests, the CPU demo default, a larger one for a GPU.
# "small" (the config defaults) is what the experiments in docs/benchmarks.md chose for 10 minutes
# on 2 CPU cores.
PRESETS = {
    "tiny": dict(dit=dict(width=32, depth=2, heads=2, conv_width=16, text_width=32, time_width=32, layout_rank=4),
                 unet=dict(widths=(16, 32), blocks=1, attention_levels=(1,), heads=2, text_width=32, time_width=32),
                 text=dict(width=32, layers=1, heads=2)),
    "small": dict(),
    "base": dict(dit=dict(width=384, depth=8, heads=6, conv_width=128, text_width=256, time_width=512),
                 text=dict(width=256, layers=4, heads=8)),
}


def guidance_scale(schedule: str, guidance: float, t: float) -> float:
    """The guidance scale at time t (1: pure noise, 0: the picture) for a `guidance_schedule`."""
    if schedule == "constant":
        return guidance
    if schedule == "linear":  # 1 at pure noise, 2 g - 1 at the end: g on average
        return 1 + (guidance - 1) * 2 * (1 - t)
    raise ValueError(f"unknown guidance_schedule {schedule!r}; expected constant or linear")


class TextToImageDiffusion(nn.Module):
    def __init__(self, config: DiffusionConfig):
        super().__init__()
        guidance_scale(config.guidance_schedule, config.guidance, 1.0)  # an unknown schedule fails here, not mid-run
        if config.text.width != config.denoiser.text_width:
            raise ValueError(f"text encoder width and {config.network}.text_width differ")
        self.config = config
        self.text_encoder = build_text_encoder(config.text)
        in_channels = 2 * config.denoiser.channels if config.self_condition else None
        self.net = (UNet if config.network == "unet" else DiT)(config.denoiser, in_channels)

    def velocity(self, x, t, ids, x0_previous=None):
        """The network: noisy images (B, 3, S, S), times (B,), token ids (B, L) and, with
        self-conditioning, the previous clean estimate (B, 3, S, S; zeros for none) -> predicted v."""
        return self.predict(x, t, self.text_encoder(ids), x0_previous)[0]

    def predict(self, x, t, caption, x0_previous=None):
        """`velocity` from the text encoder's output (text, keep, pooled): (v, the caption's preview or None)."""
        text, keep, pooled = caption
        if self.config.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if x0_previous is None else x0_previous], dim=1)
        if not getattr(self.config.denoiser, "layout_preview", 0.0):
            return self.net(x, t, text, keep, pooled), None
        layout = self.net.layout(text, keep, pooled)                                   # (B, N, r)
        preview = self.net.preview(layout)                                             # (B, 3, S, S)
        v = self.net(x, t, text, keep, pooled, layout=layout)
        if self.config.denoiser.preview_residual:
            # x0 = a x_t - s v, so predicting v - s^(k-1) P adds s^k P to the clean estimate: all of the caption's
            # preview at pure noise, none of it at the end; the network learns the difference (DiTConfig)
            sigma = alpha_sigma(t)[1].view(-1, 1, 1, 1)
            v = v - sigma ** (self.config.denoiser.preview_power - 1) * preview
        return v, preview

    def loss(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error on v for images in [-1, 1]; some captions are dropped to the empty one.
        With `layout_preview`, plus that weight times the error of the caption's preview of the picture."""
        B, device = images.shape[0], images.device
        drop = torch.rand(B, generator=generator).to(device) < self.config.cond_drop
        ids = torch.where(drop[:, None], empty_ids.expand_as(ids), ids)
        t = sample_timesteps(B, self.config.timesteps, generator, device, self.config.timestep_mean)
        noise = torch.randn(images.shape, generator=generator).to(device)
        a, s = (v.view(B, 1, 1, 1) for v in alpha_sigma(t))
        x_t = a * images + s * noise
        target = a * noise - s * images
        caption = self.text_encoder(ids)
        x0_previous = None
        if self.config.self_condition:  # half the batch first makes an estimate without gradient, then refines it
            x0_previous = torch.zeros_like(images)
            use = (torch.rand(B, generator=generator) < 0.5).to(device)
            if use.any():
                with torch.no_grad():
                    v = self.velocity(x_t[use], t[use], ids[use]).float()
                    x0_previous[use] = (a[use] * x_t[use] - s[use] * v).clamp(-1, 1)
        v, preview = self.predict(x_t, t, caption, x0_previous)
        loss = F.mse_loss(v.float(), target)
        if preview is not None:  # noise-free: where a caption puts its objects is learned far sooner than by denoising
            loss = loss + self.config.denoiser.layout_preview * F.mse_loss(preview.float(), images)
        return loss

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, empty_ids: torch.Tensor, noise: torch.Tensor,
                 steps: int | None = None, guidance: float | None = None, sampler: str | None = None):
        """Pictures in [-1, 1] (B, 3, S, S) from token ids (B, L) and starting noise (B, 3, S, S)."""
        steps = steps or self.config.steps
        guidance = self.config.guidance if guidance is None else guidance
        sample = SAMPLERS[sampler or self.config.sampler]
        percentile = self.config.dynamic_threshold if guidance > self.config.dynamic_threshold_above else 0.0
        B = ids.shape[0]
        both = torch.cat([ids, empty_ids.expand(B, -1)]) if guidance != 1 else ids
        previous = {}  # self-conditioning: each branch's last clean estimate

        def denoise(x, t):
            t_batch = torch.full((len(both),), float(t), device=x.device)
            xx = torch.cat([x, x]) if guidance != 1 else x
            v = self.velocity(xx, t_batch, both, previous.get("x0")).float()
            a, s = alpha_sigma(t_batch.double())
            x0 = (a.view(-1, 1, 1, 1) * xx - s.view(-1, 1, 1, 1) * v).float()
            previous["x0"] = x0.clamp(-1, 1).to(x.dtype)
            if guidance != 1:
                cond, uncond = x0.chunk(2)
                x0 = uncond + guidance_scale(self.config.guidance_schedule, guidance, float(t)) * (cond - uncond)
            return dynamic_threshold(x0, percentile)  # keeps guided estimates in the data range

        return sample(denoise, noise.float(), sampling_times(steps)).clamp(-1, 1)
