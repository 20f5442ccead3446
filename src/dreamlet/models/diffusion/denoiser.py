"""The denoiser layer: a network that predicts v, seen as "noisy picture, time and condition in,
clean estimate out" (k-diffusion's `Denoiser`, EDM's `Precond`). It owns the parameterisation
(v-prediction, Salimans & Ho 2022: v = alpha eps - sigma x0, so x0 = alpha x_t - sigma v), the
caption preview's skip, classifier-free guidance (Ho & Salimans 2022) and thresholding. The
training loss and every sampler, of the base model and of the super-resolution stage, go through it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedule import alpha_sigma


# Below this noise level a picture's layout is set and guidance shapes its detail (Denoiser.guided's `detail`).
DETAIL_TIME = 0.6


def detail_scale(guidance: float, detail: float) -> float:
    """The guidance scale below DETAIL_TIME: the share `detail` of the scale's excess over 1."""
    return 1 + detail * (guidance - 1)


@dataclass
class Condition:
    """What the network reads besides the noisy picture and the time, computed once for a batch
    (not once per sampling step). Every tensor has the batch first."""
    text: torch.Tensor                    # the caption's token features (B, L, T)
    keep: torch.Tensor                    # True at real tokens (B, L)
    pooled: torch.Tensor                  # the mean caption feature (B, T)
    picture: torch.Tensor | None = None   # stacked on the noisy picture as more channels (a low-res picture)
    extra: torch.Tensor | None = None     # added to the time embedding (the low-res picture's noise level)
    bias: torch.Tensor | None = None      # added to every patch token (the caption's layout, preview.py)
    preview: torch.Tensor | None = None   # the caption's preview picture (B, C, S, S): the estimate starts there

    def __len__(self) -> int:
        return len(self.text)


class Denoiser:
    """Wraps `network(x, t, text, keep, pooled, extra, bias) -> v`. With `preview_power` p > 0 and a
    condition that carries a preview picture P, the network predicts the difference from
    v - sigma^(p-1) P: since x0 = alpha x_t - sigma v, that adds sigma^p P to the clean estimate, all of
    the caption's preview at pure noise and none of it at the end (preview.py)."""

    def __init__(self, network: nn.Module, preview_power: float = 0.0):
        self.network, self.preview_power = network, preview_power

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The predicted v for noisy pictures x (B, C, S, S) at times t (B,)."""
        if cond.picture is not None:
            x = torch.cat([x, cond.picture.to(x.dtype)], dim=1)
        v = self.network(x, t, cond.text, cond.keep, cond.pooled, cond.extra, cond.bias)
        if cond.preview is not None:
            sigma = alpha_sigma(t)[1].view(-1, 1, 1, 1)
            v = v - sigma ** (self.preview_power - 1) * cond.preview
        return v

    def loss(self, images: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Mean squared error on v for clean pictures (B, C, S, S) noised with `noise` to times t (B,)."""
        a, s = (v.view(-1, 1, 1, 1) for v in alpha_sigma(t))
        target = a * noise - s * images
        return F.mse_loss(self.velocity(a * images + s * noise, t, cond).float(), target)

    def guided(self, cond: Condition, guidance: float, threshold: float = 0.0, bounded: bool = True,
               detail: float = 1.0) -> Callable:
        """A sampler's `denoise(x, t) -> x0`: with guidance g != 1, `cond` holds the caption's half then the
        unconditional (empty or negative caption) half, and x0 = uncond + g (cond - uncond). Below
        t = DETAIL_TIME the scale keeps the share `detail` of its excess over 1, 1 + detail (g - 1) (guidance
        by noise level, Kynkaanniemi et al. 2024: the layout is decided above, the detail below). Pictures are
        `bounded` in [-1, 1]: the estimate is brought back there (`dynamic_threshold` at percentile
        `threshold`, 0: clipping); latents are not."""
        halves = 1 if guidance == 1 else 2

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t_batch = torch.full((len(cond),), float(t), device=x.device)
            x = x.repeat(halves, 1, 1, 1)
            v = self.velocity(x, t_batch, cond).float()
            a, s = (v.view(-1, 1, 1, 1) for v in alpha_sigma(t_batch.double()))
            x0 = (a * x - s * v).float()
            if halves == 2:
                conditional, unconditional = x0.chunk(2)
                scale = guidance if float(t) >= DETAIL_TIME else detail_scale(guidance, detail)
                x0 = unconditional + scale * (conditional - unconditional)
            return dynamic_threshold(x0, threshold) if bounded else x0

        return denoise


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3) of clean-picture estimates
    (B, ...) in place of static clipping to [-1, 1]: per picture, s = the `percentile` quantile of
    |x0| (at least 1); x0 is clipped to [-s, s] and divided by s. Guided estimates overshoot the
    data range more the higher the guidance; clipping them flattens every overshooting pixel to the
    same saturated value, while dividing by s keeps their order and the rest's contrast. A picture
    already inside [-1, 1] is left as it is; percentile <= 0 gives static clipping."""
    if percentile <= 0:
        return x0.clamp(-1, 1)
    flat = x0.detach().flatten(1).abs().float()
    k = min(flat.shape[1], max(1, math.ceil(percentile * flat.shape[1])))  # kthvalue: no size limit, unlike quantile
    s = flat.kthvalue(k, dim=1).values.clamp(min=1).view(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
    return x0.clamp(-s, s) / s
