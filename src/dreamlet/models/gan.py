"""A text-conditional GAN: one forward pass per picture.

Generator: noise and the caption's embedding become a 4 x 4 map through one linear layer, to which a layout stem
adds what each of the 16 places reads from the caption's words by attention, with a query made from the noise and
the caption (so the noise code can put each object, with its own colour and shape, at its own place, as the
diffusion model's layout path does; docs/gan.md, "A layout stem"); then residual up-blocks whose group norms take
their scale and shift from the caption and the noise (conditional normalisation, as in BigGAN and DF-GAN).
Discriminator: residual down-blocks with spectral norm (Miyato et al. 2018) to 4 x 4, then an
unconditional score plus a projection of the caption onto the flattened 4 x 4 features (Miyato &
Koyama 2018; flattened rather than pooled so "top left" can be checked), trained matching-aware:
a real picture with another picture's caption counts as fake (GAN-CLS, Reed et al. 2016; DF-GAN).
Hinge loss, EMA generator, optional R1 penalty and DiffAugment for small sets.
Redrawing loss: the generator also redraws each training picture from its caption, and the squared error
to the real picture (weight `regression`, beside the adversarial loss at weight `adversarial`, as pix2pix
pairs an L1 loss with its conditional GAN) teaches shape, which the discriminator barely checks
(docs/gan.md, "Redrawing from the caption").
Noise code (a cVAE with a learned prior, Sohn et al. 2015; BicycleGAN's cVAE-GAN, Zhu et al. 2017): redrawn from
random noise, a caption with many right pictures (a pair's layouts) can only be answered by their blurred mean. So
the redrawing pass takes its noise from an encoding of the real picture, and a KL term pulls that code towards a
prior read from the caption; the adversarial pass and drawing take their noise from that prior, so each noise
commits to one picture (docs/gan.md, "A noise code for each picture").

The text encoder learns from the discriminator's matching-aware term (which makes it tell captions
apart) and from the redrawing loss, whose generator pass reads the live embedding; the adversarial pass
reads it detached (else the generator could bend the encoder to please the discriminator). Generator and
discriminator update at the same step from one backward pass: the generator's adversarial loss goes
through a detached copy of the discriminator's weights.

`conditioning="hash"` is the seed project's baseline (`--model gan-hash`): an unconditional DCGAN
whose noise vector is drawn from a hash of the prompt's tokens. Nothing ties the picture to the
words, and the judge shows it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from . import Family, removed
from ..text.encoder import TextEncoder, TextEncoderConfig, read_words
from .adversarial import discriminator_hinge, generator_hinge


@dataclass
class GanConfig:
    image_size: int = 32
    conditioning: str = "text"     # text | hash (the baseline: prompt hashed into the noise, text ignored)
    noise_dim: int = 64
    cond_dim: int = 128            # the caption's embedding as the generator reads it
    g_width: int = 256             # generator channels at 4 x 4; halved by each up-block
    d_width: int = 32              # discriminator channels after the first conv; doubled by each down-block
    max_width: int = 256
    unshuffle: int = 2             # both networks work at S / unshuffle with 3 * unshuffle^2 channels (pixel
                                   # (un)shuffle at the ends): the full-resolution convs were most of the CPU time
    d_lr_scale: float = 2.0        # the discriminator learns faster than the generator (TTUR, Heusel et al. 2017)
    mismatch_weight: float = 0.5   # weight of "real picture, wrong caption" among the fakes
    r1: float = 0.0                # R1 penalty weight on real pictures (0: off)
    diffaugment: str = ""          # comma list of color, translation, cutout (Zhao et al. 2020); for small sets
    regression: float = 100.0      # weight of the squared error between a drawing and its caption's real picture,
                                   # from a second generator pass that also trains the text encoder (0: off)
    adversarial: float = 0.1       # weight of the generator's adversarial loss beside it
    code_kl: float = 0.3           # the noise code (a cVAE with a learned prior): the redrawing pass draws from an
                                   # encoding of the real picture, pulled by this weight of KL to a prior read from the
                                   # caption, from which drawing takes its noise (0: off, the noise is read as it is)
    layout_heads: int = 4          # > 0: each place of the 4 x 4 start map also reads the caption's words, through a
                                   # query made from the noise and the caption, with this many heads (0: off)
    # words that know their neighbours ("red circle" is one feature at "circle"), so that a place of the layout stem
    # can read one object's colour and shape together; the diffusion model's larger positions (position_std=1) cost
    # the GAN text-following on emoji (docs/gan.md, "A layout stem")
    text: TextEncoderConfig = field(default_factory=lambda: TextEncoderConfig(conv=3))

    # Drawing is one forward pass: no sampler, steps or guidance (kept for the shared reports).
    steps = 1
    guidance = 1.0
    sampler = "one forward pass"


PRESETS = {
    "tiny": dict(noise_dim=16, cond_dim=32, g_width=32, d_width=8, max_width=32,
                 text=dict(width=32, layers=1, heads=2)),
    "small": dict(),
    "base": dict(noise_dim=128, cond_dim=256, g_width=512, d_width=64, max_width=512,
                 text=dict(width=256, layers=4, heads=8)),
}

# GANs want a smaller learning rate, no weight decay, beta1 = 0 (set in param_groups) and a slow EMA;
# batch 32 and 5e-4 learned fastest in short CPU runs (docs/gan.md).
TRAIN_DEFAULTS = dict(lr=5e-4, batch_size=32, weight_decay=0.0, grad_clip=0.0, ema_decay=0.999, warmup=0)


def blocks_for(c: GanConfig) -> int:
    """Resolution doublings between 4 x 4 and the networks' working size S / unshuffle."""
    work = c.image_size // c.unshuffle
    n = int(math.log2(max(work, 1) // 4)) if work >= 4 else -1
    if n < 1 or 4 * 2 ** n * c.unshuffle != c.image_size:
        raise ValueError(f"gan needs an image size that is unshuffle ({c.unshuffle}) x a power of two >= 8, "
                         f"not {c.image_size}")
    return n


class UpBlock(nn.Module):
    """A 3x3 conv at the input resolution, upsample x2, a 3x3 conv at the output resolution (the
    wide conv runs small: the CPU budget goes further); group norms scaled and shifted by the condition."""

    def __init__(self, channels: int, out: int, cond: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, channels, affine=False), nn.GroupNorm(8, out, affine=False)
        self.film1, self.film2 = nn.Linear(cond, 2 * channels), nn.Linear(cond, 2 * out)
        self.conv1, self.conv2 = nn.Conv2d(channels, out, 3, padding=1), nn.Conv2d(out, out, 3, padding=1)
        self.skip = nn.Conv2d(channels, out, 1)

    @staticmethod
    def modulate(h, norm, film, c):
        scale, shift = film(c)[..., None, None].chunk(2, dim=1)
        return F.relu(norm(h) * (1 + scale) + shift)

    def forward(self, x, c):
        h = F.interpolate(self.conv1(self.modulate(x, self.norm1, self.film1, c)), scale_factor=2, mode="nearest")
        h = self.conv2(self.modulate(h, self.norm2, self.film2, c))
        return F.interpolate(self.skip(x), scale_factor=2, mode="nearest") + h


class LayoutStem(nn.Module):
    """Each place of the 4 x 4 start map reads the caption's words (or a null word, "nothing here") by attention.
    Its query comes from the noise and the pooled caption, so the noise code can say which place holds which object:
    a pooled caption scaling whole feature maps cannot give two objects each its own colour and shape."""

    def __init__(self, cond: int, words: int, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(cond, 16 * words)
        self.key_value = nn.Linear(words, 2 * words)
        self.null = nn.Parameter(torch.zeros(1, 1, words))
        self.out = nn.Linear(words, channels)

    def forward(self, c, tokens, keep):  # c (B, cond), tokens (B, L, D), keep (B, L) -> (B, channels, 4, 4)
        B, L, D = tokens.shape
        k, v = self.key_value(torch.cat([self.null.expand(B, 1, D), tokens], dim=1)).chunk(2, dim=-1)
        read = read_words(self.query(c).view(B, 16, D), k, v, keep, self.heads)         # (B, 16, D)
        return self.out(read).transpose(1, 2).reshape(B, -1, 4, 4)


class Generator(nn.Module):
    def __init__(self, c: GanConfig):
        super().__init__()
        n = blocks_for(c)
        widths = [max(c.g_width // 2 ** i, 16) for i in range(n + 1)]
        self.unshuffle = c.unshuffle
        cond = c.noise_dim + (c.cond_dim if c.conditioning == "text" else 0)
        self.stem = nn.Linear(cond, widths[0] * 16)
        if c.layout_heads and c.conditioning == "text":
            self.layout = LayoutStem(cond, c.text.width, widths[0], c.layout_heads)
        self.blocks = nn.ModuleList(UpBlock(widths[i], widths[i + 1], cond) for i in range(n))
        self.out = nn.Sequential(nn.GroupNorm(8, widths[-1]), nn.ReLU(),
                                 nn.Conv2d(widths[-1], 3 * c.unshuffle ** 2, 3, padding=1),
                                 nn.PixelShuffle(c.unshuffle), nn.Tanh())

    def forward(self, z, text=None, words=None):
        """z (B, noise_dim), text (B, cond_dim) or None, words: the caption's (tokens, keep) for the layout stem."""
        c = z if text is None else torch.cat([z, text], dim=1)
        x = self.stem(c).view(len(c), -1, 4, 4)
        if hasattr(self, "layout"):
            x = x + self.layout(c, *words)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)


class DownBlock(nn.Module):
    """A 3x3 conv at the input resolution, 2x average pool, a 3x3 conv to more channels at the
    output resolution; residual, spectral norm on every weight."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(channels, channels, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(channels, out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(channels, out, 1))

    def forward(self, x):
        h = F.avg_pool2d(self.conv1(F.leaky_relu(x, 0.2)), 2)
        return self.skip(F.avg_pool2d(x, 2)) + self.conv2(F.leaky_relu(h, 0.2))


class Discriminator(nn.Module):
    def __init__(self, c: GanConfig, text_dim: int):
        super().__init__()
        n = blocks_for(c)
        widths = [min(c.d_width * 2 ** i, c.max_width) for i in range(n + 1)]
        self.stem = nn.Sequential(nn.PixelUnshuffle(c.unshuffle),
                                  spectral_norm(nn.Conv2d(3 * c.unshuffle ** 2, widths[0], 3, padding=1)))
        self.blocks = nn.Sequential(*(DownBlock(widths[i], widths[i + 1]) for i in range(n)))
        features = widths[-1] * 16
        self.score = spectral_norm(nn.Linear(features, 1))
        self.project = spectral_norm(nn.Linear(text_dim, features)) if text_dim else None

    def forward(self, images, text=None):
        h = F.leaky_relu(self.blocks(self.stem(images)), 0.2).flatten(1)   # (B, C * 4 * 4)
        score = self.score(h).squeeze(1)
        if self.project is not None:
            score = score + (self.project(text) * h).sum(1)
        return score


class NoiseEncoder(nn.Module):
    """A real picture -> the mean and log-variance of the noise vector that redraws it."""

    def __init__(self, c: GanConfig):
        super().__init__()
        n = blocks_for(c)
        widths = [min(c.d_width * 2 ** i, c.max_width) for i in range(n + 1)]
        layers = [nn.PixelUnshuffle(c.unshuffle), nn.Conv2d(3 * c.unshuffle ** 2, widths[0], 3, padding=1)]
        for i in range(n):
            layers += [nn.LeakyReLU(0.2), nn.Conv2d(widths[i], widths[i + 1], 3, padding=1), nn.AvgPool2d(2)]
        self.net = nn.Sequential(*layers, nn.LeakyReLU(0.2), nn.Flatten())
        self.head = nn.Linear(widths[-1] * 16, 2 * c.noise_dim)

    def forward(self, images):
        return self.head(self.net(images)).chunk(2, dim=1)


class NoisePrior(nn.Module):
    """A caption's embedding -> the mean and log-variance of its noise (starts as the normal prior)."""

    def __init__(self, c: GanConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c.cond_dim, 256), nn.SiLU(), nn.Linear(256, 2 * c.noise_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, text):
        return self.net(text).chunk(2, dim=1)


def sample(mean: torch.Tensor, log_var: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Standard normal noise as a sample of N(mean, exp(log_var)): reparameterised, so gradients reach both."""
    return mean + (0.5 * log_var).exp() * normal


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator | None) -> torch.Tensor:
    """Differentiable augmentation, the same kinds for real and fake pictures (Zhao et al. 2020)."""
    B, _, S, _ = x.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(x.device)  # noqa: E731
    for kind in filter(None, policy.split(",")):
        if kind == "color":
            x = x + (rand(B, 1, 1, 1) - 0.5) * 0.5                                   # brightness
            mean = x.mean(1, keepdim=True)
            x = (x - mean) * (rand(B, 1, 1, 1) * 0.5 + 0.75) + mean                  # saturation
        elif kind == "translation":
            shift = S // 8
            dx, dy = ((rand(2, B) * (2 * shift + 1)).long() - shift)
            padded = F.pad(x, [shift] * 4, value=-1.0)
            rows = torch.arange(S, device=x.device)
            ys = (rows[None, :] + shift + dy[:, None])[:, :, None].expand(B, S, S)
            xs = (rows[None, :] + shift + dx[:, None])[:, None, :].expand(B, S, S)
            x = padded[torch.arange(B, device=x.device)[:, None, None], :, ys, xs].permute(0, 3, 1, 2)
        elif kind == "cutout":
            half = S // 4
            cy, cx = (rand(2, B) * S).long()
            rows = torch.arange(S, device=x.device)
            inside = ((rows[None, :, None] - cy[:, None, None]).abs() < half) & \
                     ((rows[None, None, :] - cx[:, None, None]).abs() < half)
            x = torch.where(inside[:, None], torch.full_like(x, -1.0), x)
        else:
            raise ValueError(f"unknown diffaugment {kind!r}; expected color, translation or cutout")
    return x


def hash_noise(ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The baseline's noise: a normal vector seeded by a stable hash of each prompt's token ids."""
    rows = []
    for row in ids.cpu().numpy():
        seed = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") & (2 ** 63 - 1)
        rows.append(torch.randn(dim, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows).to(ids.device)


class TextToImageGAN(nn.Module):
    log_fields = ("d_loss", "g_loss", "diversity")   # extra columns of the training log
    settle = 500                                       # steps before collapse is judged

    def __init__(self, config: GanConfig):
        super().__init__()
        if config.conditioning not in ("text", "hash"):
            raise ValueError(f"unknown conditioning {config.conditioning!r}; expected text or hash")
        self.config = config
        self.conditional = config.conditioning == "text"
        if self.conditional:
            self.text_encoder = TextEncoder(config.text)
            self.text_to_cond = nn.Linear(2 * config.text.width, config.cond_dim)
        self.generator = Generator(config)
        self.discriminator = Discriminator(config, config.cond_dim if self.conditional else 0)
        # the noise code needs a caption for its prior and the redrawing pass for its encoder
        self.coded = self.conditional and config.code_kl > 0 and config.regression > 0
        if self.coded:
            self.encoder, self.prior = NoiseEncoder(config), NoisePrior(config)
            self.log_fields = TextToImageGAN.log_fields + ("kl",)   # nats the code carries beyond its prior
        self.history: list[dict] = []   # recent training statistics, for collapse detection
        self.steps_seen = 0              # this process's training steps (a fresh generator starts out alike)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Generator and discriminator (with the text encoder) as separate Adam groups, beta1 = 0."""
        drawing = ("generator.", "encoder.", "prior.")
        critic = [p for name, p in self.named_parameters() if not name.startswith(drawing)]
        generator = [p for name, p in self.named_parameters() if name.startswith(drawing)]
        return [{"params": generator, "betas": (0.0, 0.99), "weight_decay": weight_decay},
                {"params": critic, "betas": (0.0, 0.99), "weight_decay": weight_decay,
                 "lr_scale": self.config.d_lr_scale}]

    def caption(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, cond_dim): the first token (which reads the whole caption, in order) and the mean."""
        return self.caption_and_words(ids)[0]

    def caption_and_words(self, ids: torch.Tensor):
        """(B, L) token ids -> the caption's vector (B, cond_dim) and its words: tokens (B, L, D) and keep (B, L)."""
        tokens, keep, pooled = self.text_encoder(ids)
        return self.text_to_cond(torch.cat([tokens[:, 0], pooled], dim=1)), (tokens, keep)

    def noise(self, ids: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The generator's noise vector: from the sampled noise, or (baseline) from a hash of the prompt."""
        if self.conditional:
            return noise.flatten(1)[:, :self.config.noise_dim]
        return hash_noise(ids, self.config.noise_dim)

    def augment(self, x, generator):
        return diff_augment(x, self.config.diffaugment, generator) if self.config.diffaugment else x

    def loss(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The discriminator's and the generator's hinge losses, summed: one backward pass trains both."""
        d_loss, g_loss = self.losses(images, ids, generator)
        return d_loss + g_loss

    def losses(self, images: torch.Tensor, ids: torch.Tensor, generator: torch.Generator | None = None):
        """(discriminator loss, generator loss); each reaches only its own network's weights."""
        B, c = images.shape[0], self.config
        z = self.noise(ids, torch.randn(B, c.noise_dim, generator=generator).to(images.device))
        text, words = self.caption_and_words(ids) if self.conditional else (None, None)
        g_text, g_words = (text.detach(), (words[0].detach(), words[1])) if self.conditional else (None, None)
        if self.coded:  # the noise as drawing reads it: a sample of the caption's prior
            p_mean, p_log_var = self.prior(g_text)
            z = sample(p_mean, p_log_var, z)
        fake = self.generator(z, g_text, g_words)

        real = images.requires_grad_(c.r1 > 0)
        # one discriminator call: real pictures, generated ones, and (matching-aware) real pictures
        # with another picture's caption, which count as fake unless that caption is the same
        pictures, captions = [real, fake.detach()], [text, text]
        if self.conditional and c.mismatch_weight:
            pictures, captions = pictures + [images.detach()], captions + [text.roll(1, 0)]
        scores = self.discriminator(self.augment(torch.cat(pictures), generator),
                                    torch.cat(captions) if self.conditional else None).split(B)
        d_real, d_fake = scores[0], scores[1]
        d_loss = discriminator_hinge(d_real, d_fake)
        if len(scores) == 3:
            other = (ids != ids.roll(1, 0)).any(1).float()
            d_loss = d_loss + c.mismatch_weight * (F.relu(1 + scores[2]) * other).sum() / other.sum().clamp(min=1)
        if c.r1 > 0:
            grad, = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            d_loss = d_loss + c.r1 / 2 * grad.pow(2).sum([1, 2, 3]).mean()

        kl = None
        g_loss = c.adversarial * generator_hinge(self.discriminator, self.augment(fake, generator), g_text)
        if c.regression and self.conditional:
            # the dense teacher the discriminator is not: redraw the caption's real picture. Its own pass reads
            # the live caption, so this loss (not the adversarial one) also teaches the text encoder what to keep
            if self.coded:  # the noise that redraws this very picture, and what it says beyond the caption (KL)
                q_mean, q_log_var = self.encoder(images.detach())
                z = sample(q_mean, q_log_var, torch.randn(q_mean.shape, generator=generator).to(q_mean.device))
                kl = 0.5 * (p_log_var - q_log_var + (q_log_var.exp() + (q_mean - p_mean).pow(2)) / p_log_var.exp()
                            - 1).sum(1).mean()
                g_loss = g_loss + c.code_kl * kl
            redrawn = self.generator(z, text, words)
            g_loss = g_loss + c.regression * F.mse_loss(redrawn, images.detach())

        with torch.no_grad():
            spread = lambda x: x.float().std(0).mean().item()  # noqa: E731
            self.steps_seen += 1
            self.history = (self.history + [{"d_loss": d_loss.item(), "g_loss": g_loss.item(),
                                             "diversity": spread(fake) / max(spread(images), 1e-6)}
                                            | ({"kl": kl.item()} if kl is not None else {})])[-50:]
        return d_loss, g_loss

    def log_values(self) -> dict:
        """Means of the recent statistics: discriminator and generator loss, and the spread of the
        generated pictures across the batch relative to the real ones (1: as varied, 0: all alike)."""
        if not self.history:
            return {}
        return {k: sum(h[k] for h in self.history) / len(self.history) for k in self.history[0]}

    def health(self) -> str | None:
        """A warning when training has collapsed, else None. Judged over the last 50 steps, and only
        after the first `settle` steps: early generators draw nearly the same picture for every input
        (spread below 0.1 around step 100 in healthy runs) and then spread out."""
        if self.steps_seen < self.settle:
            return None
        stats = self.log_values()
        if stats["diversity"] < 0.1:
            return (f"mode collapse: the generated pictures are nearly all alike (spread {stats['diversity']:.2f} "
                    f"of the real pictures'); try --lr lower, r1 > 0, or an earlier checkpoint")
        if stats["d_loss"] < 0.05:
            return (f"the discriminator has won (D loss {stats['d_loss']:.3f}): the generator gets no signal; "
                    f"try r1 > 0, diffaugment, or a lower discriminator learning rate")
        return None

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, empty_ids: torch.Tensor, noise: torch.Tensor, **unused) -> torch.Tensor:
        """Pictures in [-1, 1] (B, 3, S, S) from token ids and the per-picture noise (its first values)."""
        z = self.noise(ids, noise.float())
        text, words = self.caption_and_words(ids) if self.conditional else (None, None)
        if self.coded:
            z = sample(*self.prior(text), z)
        return self.generator(z, text, words).float()


def without_regression(config: dict) -> dict:
    """Version 3 adds the redrawing loss and weighs the adversarial one 0.1; a model saved before had neither."""
    return config | {"regression": 0.0, "adversarial": 1.0}


def without_code(config: dict) -> dict:
    """Version 4 adds the noise code; a model saved before read its noise as it was."""
    return config | {"code_kl": 0.0}


def without_layout(config: dict) -> dict:
    """Version 5 adds the layout stem and the text encoder's convolution; a model saved before had neither."""
    text = {"conv": 0} | config.get("text", {})
    return config | {"layout_heads": 0, "text": text}


FAMILY = Family("gan", GanConfig, TextToImageGAN, PRESETS, train_defaults=TRAIN_DEFAULTS, version=5, guided=False,
                migrations={1: lambda config: removed(config, "text.token_std"), 2: without_regression,
                            3: without_code, 4: without_layout})
