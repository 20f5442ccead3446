"""The pieces every picture autoencoder shares (the vqvae family's image tokenizers, the autoencoder
family's continuous latents): a convolutional encoder and decoder, a patch discriminator with
VQGAN's adaptively weighted hinge loss (Esser et al. 2021), and PSNR.

The encoder folds the picture by 2 first (a pixel unshuffle), so no wide convolution runs at full
resolution, then halves it with strided convolutions down to the latent grid; the decoder mirrors
it with nearest upsampling and a pixel shuffle. No perceptual loss: its VGG weights cannot be
downloaded here.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .adversarial import discriminator_hinge, generator_hinge


def halvings(image_size: int, downsample: int) -> int:
    """How many times the networks halve the picture (the first halving is a pixel unshuffle)."""
    n = int(math.log2(downsample)) if downsample >= 2 else 0
    if n < 1 or 2 ** n != downsample or image_size % downsample:
        raise ValueError(f"the autoencoder needs downsample a power of two >= 2 that divides the image size "
                         f"({image_size}), not {downsample}")
    return n


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                   nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.block(x)


class Encoder(nn.Module):
    """(B, channels, S, S) -> (B, out, S/d, S/d), d = 2 ** halvings."""

    def __init__(self, channels: int, width: int, blocks: int, halvings: int, out: int):
        super().__init__()
        layers = [nn.PixelUnshuffle(2), nn.Conv2d(4 * channels, width, 3, padding=1)]
        for _ in range(halvings - 1):
            layers += [ResBlock(width), nn.Conv2d(width, width, 4, stride=2, padding=1)]
        layers += [ResBlock(width) for _ in range(blocks)]
        layers += [nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, out, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """(B, latent, S/d, S/d) -> (B, channels, S, S), unbounded (clamped to [-1, 1] only when drawing):
    a tanh would make the black background, most of every shapes picture, hard to reach."""

    def __init__(self, latent: int, width: int, blocks: int, halvings: int, channels: int):
        super().__init__()
        layers = [nn.Conv2d(latent, width, 1)] + [ResBlock(width) for _ in range(blocks)]
        for _ in range(halvings - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1),
                       ResBlock(width)]
        layers += [nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, 4 * channels, 3, padding=1),
                   nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the last convolution, where VQGAN's adaptive weight compares gradients."""
        return self.net[-2].weight

    def forward(self, x):
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (Isola et al. 2017, as in VQGAN): one real/fake score per patch, (B, S/4 * S/4)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * width),
                                 nn.LeakyReLU(0.2), nn.Conv2d(2 * width, 1, 3, padding=1))

    def forward(self, x):
        return self.net(x).flatten(1)


def adversarial_loss(discriminator: PatchDiscriminator, decoder: Decoder, images: torch.Tensor,
                     reconstruction: torch.Tensor, rec_loss: torch.Tensor, weight: float) -> torch.Tensor:
    """VQGAN's hinge losses, summed: the discriminator's on real and (detached) reconstructed pictures,
    and the decoder's through a detached copy of the discriminator's weights (one backward pass trains
    both, as in the gan family), weighted adaptively (Esser et al. 2021, eq. 7): lambda = |grad of the
    reconstruction loss| / |grad of the adversarial loss| at the decoder's last layer, times `weight`."""
    real, fake = discriminator(torch.cat([images, reconstruction.detach()])).chunk(2)
    d_loss = discriminator_hinge(real, fake)
    g_loss = generator_hinge(discriminator, reconstruction)
    rec_grad, = torch.autograd.grad(rec_loss, decoder.last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, decoder.last_layer, retain_graph=True)
    adaptive = (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach()
    return d_loss + weight * adaptive * g_loss


class TrainedWithDiscriminator(nn.Module):
    """What the autoencoders share in training: a `step` buffer (saved and resumed with the weights) that
    starts the discriminator after `config.disc_start` steps, and the recent batches' PSNR for the log.
    A subclass sets `config`, `decoder`, `discriminator` (None for none) and `history` ([]), and registers
    `step`."""
    log_fields = ("psnr",)   # an extra training-log column

    def adversarial_after_warmup(self, images: torch.Tensor, reconstruction: torch.Tensor,
                                 rec_loss: torch.Tensor) -> torch.Tensor | float:
        c = self.config
        if self.discriminator is None or self.step.item() < c.disc_start:
            return 0.0
        return adversarial_loss(self.discriminator, self.decoder, images, reconstruction, rec_loss, c.disc_weight)

    @torch.no_grad()
    def count_step(self, reconstruction: torch.Tensor, images: torch.Tensor) -> None:
        """After a training batch: one more step, and its reconstruction PSNR for the log."""
        self.step += 1
        self.history = (self.history + [psnr(reconstruction, images)])[-50:]

    def log_values(self) -> dict:
        return {"psnr": sum(self.history) / max(len(self.history), 1)}


def psnr(reconstruction: torch.Tensor, images: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB on [0, 1] pixels, from pictures in [-1, 1]: 10 log10(1 / MSE)."""
    mse = ((reconstruction.float().clamp(-1, 1) - images.float()) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-10))
