"""The noise schedule: variance-preserving cosine (Nichol & Dhariwal 2021) in continuous time.

x_t = alpha(t) x_0 + sigma(t) eps with alpha = cos(pi t / 2), sigma = sin(pi t / 2), t in [0, 1].
The network predicts v = alpha eps - sigma x_0 (Salimans & Ho 2022), which stays well scaled at
both ends of the schedule.
"""
from __future__ import annotations

import math

import torch


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def half_log_snr(t: torch.Tensor) -> torch.Tensor:
    """log(alpha / sigma), half the log signal-to-noise ratio: the time variable of DPM-Solver (its lambda)."""
    alpha, sigma = alpha_sigma(t)
    return torch.log(alpha / sigma)


def sample_timesteps(batch: int, mode: str, generator: torch.Generator | None = None,
                     device="cpu", mean: float = 0.0) -> torch.Tensor:
    """Training timesteps (B,). "logit_normal" puts more weight on middle noise levels, where
    layout and shape are decided (Esser et al. 2024, SD3), centred on sigmoid(mean); "uniform" is
    the classic choice."""
    if mode == "uniform":
        return torch.rand(batch, generator=generator).to(device)
    if mode == "logit_normal":
        return torch.sigmoid(mean + torch.randn(batch, generator=generator)).to(device)
    raise ValueError(f"unknown timestep sampling {mode!r}; expected uniform or logit_normal")


def sampling_times(steps: int) -> torch.Tensor:
    """steps + 1 times from pure noise (t = 1) down to the clean image (t = 0), float64."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def edit_times(steps: int, strength: float) -> torch.Tensor:
    """Image-to-image (SDEdit, Meng et al. 2022): the last round(steps * strength) of `steps` sampling
    times, so the start is noised to t = strength; strength 1 is plain sampling, 0 no step at all."""
    return sampling_times(steps)[steps - round(steps * strength):]
