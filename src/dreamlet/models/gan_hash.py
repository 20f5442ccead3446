"""The seed project's baseline, kept as a reference: a DCGAN whose prompt is tokenized and hashed
into the noise vector, with an unconditional discriminator. It draws plausible pictures that do
not follow the text (see docs/benchmarks.md); `dreamlet.models.gan` is the GAN that does."""
from __future__ import annotations

from dataclasses import dataclass

from .gan import PRESETS, TRAIN_DEFAULTS, GanConfig, TextToImageGAN


@dataclass
class Config(GanConfig):
    conditioning: str = "hash"


Model = TextToImageGAN
__all__ = ["Config", "Model", "PRESETS", "TRAIN_DEFAULTS"]
