"""Image tokenizers: the first stage of a DALL-E-style model (`--model vqvae`).

A convolutional encoder turns a picture into a grid of discrete codes (32 px -> 8 x 8 with
`downsample=4`) and a decoder draws the picture back from them; a transformer prior then models
the codes. Three kinds (`--set kind=...`):

- `vq`: VQ-VAE (van den Oord et al. 2017) with an EMA codebook (their appendix; Razavi et al. 2019)
  and a commitment loss. Codes are factorised and l2-normalised (Yu et al. 2022, ViT-VQGAN): the
  encoder's output is projected to a low-dimensional space (`code_dim`) and looked up there by
  cosine similarity, which keeps far more of the codebook in use. Codes that fall out of use (fewer
  than `dead_below` uses per picture) are restarted from encoder outputs of the batch (Dhariwal et
  al. 2020, Jukebox), drawn with probability in proportion to how badly the codebook serves them
  (k-means++ seeding, Arthur & Vassilvitskii 2007), so new codes go where they are needed rather
  than onto the black background.
- `dvae`: DALL-E's discrete VAE (Ramesh et al. 2021): the encoder gives logits over the codebook,
  training decodes a Gumbel-softmax relaxation (Jang et al. 2017; Maddison et al. 2017) whose
  temperature is annealed, with a KL term towards the uniform prior; encoding takes the argmax.
  The reconstruction loss is MSE here, not DALL-E's logit-Laplace, and by default the decoder reads
  the hard sample with the relaxation's gradient (straight-through), so it learns the codes it is given.
- `vqgan`: `vq` plus a patch discriminator with a hinge loss and the adaptive weight of Esser et
  al. 2021 (VQGAN), switched on after `disc_start` steps. No perceptual loss: its VGG weights
  cannot be downloaded here.

Training state that is not learned by gradients (the EMA codebook, its counts, the step that sets
the dvae's temperature and the discriminator's start) lives in buffers, updated in `loss()` under
`torch.no_grad()` only in training mode: the shared loop copies buffers into its EMA model each
step, so the saved tokenizer holds the trained codebook, and a resumed run continues exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Family, removed
from .autoencoding import Decoder, Encoder, PatchDiscriminator, TrainedWithDiscriminator, halvings

KINDS = ("vq", "dvae", "vqgan")


@dataclass
class VQConfig:
    image_size: int = 32
    channels: int = 3
    kind: str = "vq"               # vq | dvae | vqgan (see the module docstring)
    downsample: int = 4            # a power of two >= 2: 32 px -> 8 x 8 tokens
    codebook_size: int = 512
    code_dim: int = 16             # factorised: codes are looked up in this low-dimensional space
    width: int = 64                # encoder/decoder channels
    blocks: int = 2                # residual blocks at the token grid, in the encoder and in the decoder
    # vq and vqgan
    ema_decay: float = 0.9         # codebook EMA (Razavi et al. 2019); short, so codes keep up with a young encoder
    commitment: float = 0.25       # beta of the commitment loss (van den Oord et al. 2017)
    dead_below: float = 0.02       # restart a code used less than this often per picture (EMA over batches)
    # dvae
    tau_start: float = 1.0         # Gumbel-softmax temperature, annealed exponentially ...
    tau_end: float = 1 / 16        # ... to this (DALL-E's final value) ...
    tau_steps: int = 500           # ... over this many steps (DALL-E: the first 5 % of training)
    kl_weight: float = 1e-3        # weight of KL(q || uniform) per token against the per-pixel MSE
    straight_through: bool = True  # decode the hard sample, soft gradient (Jang et al. 2017): without it the
                                   # decoder learned to read soft mixtures and the argmax codes decoded at 17.7 dB
    # vqgan
    disc_width: int = 32           # patch discriminator channels after its first conv
    disc_weight: float = 0.1       # scales the adaptive weight of the generator's adversarial loss
    disc_start: int = 300          # steps of reconstruction alone before the discriminator joins


PRESETS = {
    "tiny": dict(width=16, blocks=1, codebook_size=64, code_dim=8, disc_width=8),
    "small": dict(),
    "base": dict(width=128, codebook_size=1024, code_dim=32, disc_width=64),
}

# Batch 8 at 1e-3 reconstructed held-out shapes best after 25 s of CPU (26.9 dB; batch 4: 25.9, batch
# 16: 25.7, batch 32: 22.5; docs/dalle.md). No weight decay; a short weight EMA, since the codebook
# the loop copies into its EMA model is the live one and the averaged encoder should stay close to it.
TRAIN_DEFAULTS = dict(lr=1e-3, batch_size=8, weight_decay=0.0, warmup=50, ema_decay=0.99)


class VQModel(TrainedWithDiscriminator):
    log_fields = ("psnr", "usage")   # extra training-log columns

    def __init__(self, config: VQConfig):
        super().__init__()
        if config.kind not in KINDS:
            raise ValueError(f"unknown kind {config.kind!r}; expected one of {', '.join(KINDS)}")
        self.config = c = config
        dvae = c.kind == "dvae"
        n = halvings(c.image_size, c.downsample)
        self.encoder = Encoder(c.channels, c.width, c.blocks, n, c.codebook_size if dvae else c.code_dim)
        self.decoder = Decoder(c.code_dim, c.width, c.blocks, n, c.channels)
        if dvae:  # a learned embedding, read through the (relaxed) one-hot codes
            self.codebook = nn.Parameter(torch.randn(c.codebook_size, c.code_dim))
        else:  # unit vectors, the normalised EMA of the encoder outputs assigned to each
            codes = F.normalize(torch.randn(c.codebook_size, c.code_dim), dim=1)
            self.register_buffer("codebook", codes)
            self.register_buffer("embed_sum", codes.clone())
            # EMA of uses per picture; zero at first, so codes the first batch does not use are
            # restarted from its encoder outputs (a data-dependent initialisation for free)
            self.register_buffer("cluster_size", torch.zeros(c.codebook_size))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.discriminator = PatchDiscriminator(c.channels, c.disc_width) if c.kind == "vqgan" else None
        self.history: list[float] = []                                # recent training-batch PSNRs
        self.used = torch.zeros(c.codebook_size, dtype=torch.bool)    # codes used since the last log line

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.config.image_size // self.config.downsample

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The autoencoder, and (vqgan) the discriminator with VQGAN's Adam betas."""
        groups = [{"params": [p for n, p in self.named_parameters() if not n.startswith("discriminator.")],
                   "weight_decay": weight_decay}]
        if self.discriminator is not None:
            groups.append({"params": list(self.discriminator.parameters()), "betas": (0.5, 0.9), "weight_decay": 0.0})
        return groups

    # ------------------------------------------------------------------ codes

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """vq: unit vectors (B, h, w, code_dim); dvae: logits (B, h, w, codebook_size)."""
        z = self.encoder(images).permute(0, 2, 3, 1)
        return z if self.config.kind == "dvae" else F.normalize(z, dim=-1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code to each unit vector (..., code_dim): the largest cosine similarity."""
        with torch.no_grad():
            return (z.detach().float() @ self.codebook.T).argmax(-1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> the decoder's input (B, code_dim, h, w)."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures (B, 3, S, S) in [-1, 1] -> codes (B, S/d, S/d), long."""
        z = self.project(images.float())
        return z.argmax(-1) if self.config.kind == "dvae" else self.nearest(z)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w), long -> pictures (B, 3, S, S) in [-1, 1]."""
        return self.decoder(self.embed(codes.long())).float().clamp(-1, 1)

    # ------------------------------------------------------------------ training

    def loss(self, images: torch.Tensor, ids: torch.Tensor = None, empty_ids: torch.Tensor = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction MSE plus the kind's terms; the captions are ignored."""
        c = self.config
        z = self.project(images)
        if c.kind == "dvae":
            tau = max(c.tau_end, c.tau_start * (c.tau_end / c.tau_start) ** (self.step.item() / c.tau_steps))
            uniform = torch.rand(z.shape, generator=generator).to(z.device).clamp(1e-9, 1 - 1e-9)
            soft = F.softmax((z - torch.log(-torch.log(uniform))) / tau, dim=-1)      # (B, h, w, K)
            if c.straight_through:  # the decoder reads the sampled code itself, the gradient goes through soft
                soft = F.one_hot(soft.argmax(-1), c.codebook_size).type_as(soft) + soft - soft.detach()
            reconstruction = self.decoder((soft @ self.codebook).permute(0, 3, 1, 2))
            log_q = F.log_softmax(z, dim=-1)
            kl = (log_q.exp() * log_q).sum(-1).mean() + math.log(c.codebook_size)   # KL(q || uniform) per token
            codes = z.argmax(-1)
            loss = F.mse_loss(reconstruction, images) + c.kl_weight * kl
        else:
            codes = self.nearest(z)
            q = F.embedding(codes, self.codebook)                                   # (B, h, w, D)
            reconstruction = self.decoder((z + (q - z).detach()).permute(0, 3, 1, 2))  # straight-through
            rec_loss = F.mse_loss(reconstruction, images)
            loss = rec_loss + c.commitment * F.mse_loss(z, q)
            if self.training:
                self.update_codebook(z.detach().float(), codes, generator)  # fp32 even under bf16 autocast
            loss = loss + self.adversarial_after_warmup(images, reconstruction, rec_loss)
        if self.training:
            self.count_step(reconstruction, images)
            self.used |= torch.bincount(codes.flatten().cpu(), minlength=c.codebook_size) > 0
        return loss

    @torch.no_grad()
    def update_codebook(self, z: torch.Tensor, codes: torch.Tensor, generator: torch.Generator | None) -> None:
        """EMA of each code's assigned encoder outputs (van den Oord et al. 2017, appendix A.1), then
        restart the codes whose use has died out."""
        batch = len(z)
        z, codes = z.reshape(-1, z.shape[-1]), codes.flatten()                      # (N, D), (N,)
        one_hot = F.one_hot(codes, self.config.codebook_size).type_as(z)            # (N, K)
        decay = self.config.ema_decay
        self.cluster_size.lerp_(one_hot.sum(0) / batch, 1 - decay)
        with torch.autocast(z.device.type, enabled=False):  # sums of many vectors: fp32 under a bf16 autocast too
            self.embed_sum.lerp_(one_hot.T @ z, 1 - decay)
        # Restart: new codes at encoder outputs drawn in proportion to their squared distance from
        # their code (k-means++), with the loop's generator so runs repeat exactly. A restarted code
        # that finds no use is restarted again after about ln 3 / (1 - decay) steps.
        dead = (self.cluster_size < self.config.dead_below).nonzero().flatten()
        if len(dead):
            error = (z - self.codebook[codes]).pow(2).sum(1).cpu() + 1e-8
            picks = torch.multinomial(error, len(dead), replacement=len(dead) > len(error), generator=generator)
            self.embed_sum[dead] = z[picks.to(z.device)]
            self.cluster_size[dead] = 3 * self.config.dead_below
        self.codebook.copy_(F.normalize(self.embed_sum, dim=1))

    def log_values(self) -> dict:
        """Mean PSNR of recent training batches, and the fraction of the codebook used since the last log line."""
        values = super().log_values() | {"usage": self.used.float().mean().item()}
        self.used.zero_()
        return values


def evaluate(args, pipeline) -> tuple[dict, str]:
    """`dreamlet eval` of an image tokenizer: how well it reconstructs held-out pictures."""
    from ..evaluation import evaluate_tokenizer, judged_summary
    report = evaluate_tokenizer(args.model, args.data, count=3 * args.prompts, pipeline=pipeline)
    return report, (f"reconstruction PSNR {report['psnr']:.2f} dB, codebook usage {100 * report['usage']:.1f} % "
                    f"({report['codes_used']} of {report['codebook_size']} codes), perplexity "
                    f"{report['perplexity']:.1f} on {report['pictures']} held-out pictures{judged_summary(report)}")


FAMILY = Family("vqvae", VQConfig, VQModel, PRESETS, train_defaults=TRAIN_DEFAULTS, draws=False,
                does_instead="it turns pictures into codes (train --model dalle with it)",
                evaluate=evaluate, image_tokenizer=lambda model: model, version=3,
                migrations={1: lambda config: removed(config, "text.token_std"),
                            2: lambda config: removed(config, "text")})
