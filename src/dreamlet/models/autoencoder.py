"""A picture autoencoder with continuous latents (`--model autoencoder`): the first stage of latent
diffusion (Rombach et al. 2022), trained from scratch on the user's own pictures.

The encoder compresses a picture 4x or 8x per side to a few channels (64 x 64 x 3 -> 16 x 16 x 8 by
default) as a diagonal Gaussian, the decoder draws it back. The loss is the reconstruction's mean
squared error, a small KL divergence towards N(0, I) that keeps the latent space smooth and
bounded (the KL-regularised autoencoder of latent diffusion), and, after `disc_start` steps, VQGAN's
adaptively weighted patch discriminator (Esser et al. 2021), so that detail is drawn rather than
blurred. The networks and the discriminator are the vqvae family's (autoencoding.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import Family
from .autoencoding import Decoder, Encoder, PatchDiscriminator, TrainedWithDiscriminator, halvings


@dataclass
class AutoencoderConfig:
    image_size: int = 64
    channels: int = 3
    downsample: int = 4            # a power of two >= 2: 64 px -> 16 x 16 latents
    latent_channels: int = 8       # channels of the latent grid (4 reconstructed held-out emoji at 29.1 dB
                                   # after 7.5 CPU minutes, 8 at 31.5 dB: bench/results/autoencoder_channels.json)
    width: int = 64                # encoder/decoder channels
    blocks: int = 2                # residual blocks at the latent grid, in the encoder and in the decoder
    kl_weight: float = 1e-5        # weight of KL(q(z|x) || N(0, I)) per latent element against the per-pixel MSE
    disc_width: int = 32           # patch discriminator channels after its first conv
    disc_weight: float = 0.1       # scales the adaptive weight of the decoder's adversarial loss
    disc_start: int = 1000         # steps of reconstruction alone before the discriminator joins


PRESETS = {
    "tiny": dict(width=16, blocks=1, disc_width=8),
    "small": dict(),
    "base": dict(width=128, disc_width=64),
}

# As the vqvae family's image tokenizers: small batches, no weight decay, a short weight EMA.
TRAIN_DEFAULTS = dict(lr=1e-3, batch_size=8, weight_decay=0.0, warmup=50, ema_decay=0.99)


class Autoencoder(TrainedWithDiscriminator):

    def __init__(self, config: AutoencoderConfig, discriminator: bool = True):
        """Without `discriminator`, for a frozen autoencoder that only encodes and decodes (latent diffusion)."""
        super().__init__()
        self.config = c = config
        n = halvings(c.image_size, c.downsample)
        self.encoder = Encoder(c.channels, c.width, c.blocks, n, 2 * c.latent_channels)  # mean and log-variance
        self.decoder = Decoder(c.latent_channels, c.width, c.blocks, n, c.channels)
        self.discriminator = PatchDiscriminator(c.channels, c.disc_width) if discriminator else None
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # starts the discriminator; saved, resumed
        self.history: list[float] = []                                   # recent training batches' PSNR

    @property
    def latent_size(self) -> int:
        return self.config.image_size // self.config.downsample

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The autoencoder, and the discriminator with VQGAN's Adam betas."""
        return [{"params": [p for n, p in self.named_parameters() if not n.startswith("discriminator.")],
                 "weight_decay": weight_decay},
                {"params": list(self.discriminator.parameters()), "betas": (0.5, 0.9), "weight_decay": 0.0}]

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pictures (B, 3, S, S) in [-1, 1] -> the latent Gaussian's mean and log-variance, (B, C, s, s) each."""
        mean, log_var = self.encoder(images).chunk(2, dim=1)
        return mean, log_var.clamp(-30, 20)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures (B, 3, S, S) in [-1, 1] -> latents (B, C, s, s): the posterior's mean."""
        return self.posterior(images.float())[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, s, s) -> pictures (B, 3, S, S) in [-1, 1]."""
        return self.decoder(latents).float().clamp(-1, 1)

    def loss(self, images: torch.Tensor, ids: torch.Tensor = None, empty_ids: torch.Tensor = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction MSE of a latent sampled from the posterior, the KL term, and after `disc_start`
        steps the adversarial loss; the captions are ignored."""
        c = self.config
        mean, log_var = self.posterior(images)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        reconstruction = self.decoder(mean + (0.5 * log_var).exp() * eps)
        rec_loss = F.mse_loss(reconstruction, images)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).mean()
        loss = rec_loss + c.kl_weight * kl + self.adversarial_after_warmup(images, reconstruction, rec_loss)
        if self.training:
            self.count_step(reconstruction, images)
        return loss


def evaluate(args, pipeline) -> tuple[dict, str]:
    """`dreamlet eval` of an autoencoder: reconstruction PSNR on held-out pictures, and with --clip the
    reconstructions' FID against the originals in that CLIP's feature space."""
    from ..evaluation import evaluate_reconstruction, judged_summary
    report = evaluate_reconstruction(args.model, args.data, count=3 * args.prompts, pipeline=pipeline,
                                     clip=args.clip)
    fid = f", reconstruction FID {report['fid']:.1f} (CLIP features)" if "fid" in report else ""
    return report, (f"reconstruction PSNR {report['psnr']:.2f} dB{fid} on {report['pictures']} held-out pictures"
                    f"{judged_summary(report)}")


FAMILY = Family("autoencoder", AutoencoderConfig, Autoencoder, PRESETS, train_defaults=TRAIN_DEFAULTS, draws=False,
                does_instead="it compresses pictures to latents (train --model latent-diffusion with it)",
                evaluate=evaluate)
