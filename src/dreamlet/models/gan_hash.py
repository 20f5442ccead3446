"""The seed project's baseline, kept as a reference: a DCGAN whose prompt is tokenized and hashed
into the noise vector, with an unconditional discriminator. It draws plausible pictures that do
not follow the text (see docs/benchmarks.md); `dreamlet.models.gan` is the GAN that does."""
from __future__ import annotations

from dataclasses import dataclass

from . import Family, removed
from .gan import PRESETS, TRAIN_DEFAULTS, GanConfig, TextToImageGAN


@dataclass
class HashGanConfig(GanConfig):
    conditioning: str = "hash"
    regression: float = 0.0      # the baseline as it was: no caption to redraw from, the adversarial loss alone
    adversarial: float = 1.0
    code_kl: float = 0.0         # no noise code: the noise is the prompt's hash


FAMILY = Family("gan-hash", HashGanConfig, TextToImageGAN, PRESETS, train_defaults=TRAIN_DEFAULTS, version=2,
                guided=False,
                migrations={1: lambda config: removed(config, "text.token_std")})
