"""Deterministic samplers: one short stateless function each, the same signature for all.

`denoise(x, t) -> x0` is the model's estimate of the clean image at time t (guidance and
thresholding already applied: denoiser.Denoiser.guided); `times` runs from 1 (or from where an
image-to-image start is noised to) down to 0 (schedule.sampling_times). Each call to denoise is one
network evaluation, so `len(times) - 1` is the step count. `callback(i, x, x0)` runs after every
step; what it returns, when not None, replaces x (inpainting puts the known pixels back so).
"""
from __future__ import annotations

import torch

from .schedule import alpha_sigma, half_log_snr


def after_step(callback, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    replaced = callback(i, x, x0)
    return x if replaced is None else replaced


def with_progress(callback, progress, steps: int):
    """A sampler callback that runs `callback` (may be None) and then reports `progress(i + 1, steps)`
    after step i, e.g. to a progress bar or a web page; an exception raised there stops sampling."""
    if progress is None:
        return callback

    def step(i, x, x0):
        x = x if callback is None else after_step(callback, i, x, x0)
        progress(i + 1, steps)
        return x
    return step


@torch.no_grad()
def sample_ddim(denoise, x, times, callback=None):
    """DDIM with eta = 0 (Song et al. 2021, eq. 12): move to the next time along the predicted noise."""
    for i in range(len(times) - 1):
        (a, s), (a_next, s_next) = alpha_sigma(times[i]), alpha_sigma(times[i + 1])
        x0 = denoise(x, times[i])
        eps = (x - a * x0) / s
        x = (a_next * x0 + s_next * eps).to(x.dtype)
        if callback is not None:
            x = after_step(callback, i, x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise, x, times, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep in log-SNR, one
    network evaluation per step, reusing the previous step's estimate."""
    previous, h_previous = None, None
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        x0 = denoise(x, t)
        a_next, s_next = alpha_sigma(t_next)
        if t_next == 0:  # the last step lands on the estimate itself
            x = x0
        else:
            h = half_log_snr(t_next) - half_log_snr(t)
            d = x0
            if previous is not None:
                r = h_previous / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous
            x = (s_next / alpha_sigma(t)[1]) * x - a_next * torch.expm1(-h) * d
            x = x.to(x0.dtype)
            h_previous = h
        previous = x0
        if callback is not None:
            x = after_step(callback, i, x, x0)
    return x


SAMPLERS = {"ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}
