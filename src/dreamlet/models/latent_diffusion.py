"""Latent diffusion (Rombach et al. 2022, `--model latent-diffusion`): the default diffusion model, its
text encoder, caption preview, DiT, denoiser layer and samplers, on the latents of an autoencoder
trained from scratch on the same pictures (autoencoder.py): 64 x 64 x 3 pictures become 16 x 16 x 8
latents, so the transformer sees as many tokens as at 32 px in pixel space, and drawing ends with
one pass of the decoder.

The autoencoder is the first stage: trained by the same command into OUT/autoencoder with
`autoencoder_share` of the budget, or given (`--autoencoder RUN/model`); it is frozen, and its
weights travel in this model's file. Latents are multiplied by `latent_scale`, measured on the
training pictures, so that they have unit variance as the noise schedule assumes; they are not
clipped while sampling (latents have no fixed range, unlike pixels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import Family, Flag
from .autoencoder import Autoencoder, AutoencoderConfig
from .diffusion import TEXT_ENCODER_FLAG
from .diffusion.dit import DiTConfig
from .diffusion.model import PRESETS as PIXEL_PRESETS, DiffusionConfig, TextToImageDiffusion


@dataclass
class LatentDiffusionConfig(DiffusionConfig):
    image_size: int = 64               # pixels (`--size`); the autoencoder's size
    dit: DiTConfig = field(default_factory=lambda: DiTConfig(patch=2))  # 16 x 16 latents -> 8 x 8 tokens
    rerank: int = 1   # reranking by match() is measured on pixel-space diffusion only: one picture by default
    guidance_detail: float = 1.0       # guidance by noise level is measured on pixel-space diffusion only: constant
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    autoencoder_dir: str = ""          # the autoencoder it was trained with (OUT/autoencoder/model, or --autoencoder)
    latent_scale: float = 1.0          # latents times this have unit variance (measured on the training pictures)
    autoencoder_share: float = 0.25    # of a time budget, when the command trains the autoencoder first


# The pixel family's sizes; the autoencoder inside follows the same preset name.
PRESETS = {name: dict(preset, autoencoder=AUTOENCODER) for name, preset, AUTOENCODER in [
    ("tiny", PIXEL_PRESETS["tiny"], dict(width=16, blocks=1, disc_width=8)),
    ("small", PIXEL_PRESETS["small"], {}), ("base", PIXEL_PRESETS["base"], dict(width=128, disc_width=64))]}


class LatentDiffusion(TextToImageDiffusion):
    bounded = False  # latents: no clipping to [-1, 1] while sampling

    def __init__(self, config: LatentDiffusionConfig):
        ae = config.autoencoder
        if ae.image_size != config.image_size:
            raise ValueError(f"the autoencoder works at {ae.image_size} px, not {config.image_size}")
        super().__init__(config, size=config.image_size // ae.downsample, channels=ae.latent_channels)
        self.autoencoder = Autoencoder(ae, discriminator=False).requires_grad_(False)

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """The shape of one picture's starting noise: its latents'."""
        ae = self.config.autoencoder
        return ae.latent_channels, self.config.image_size // ae.downsample, self.config.image_size // ae.downsample

    def load_first_stage(self) -> None:
        """A fresh run copies the trained autoencoder's weights in (later loads read them from this model's file)."""
        from ..checkpoint import load_tensors
        weights = load_tensors(Path(self.config.autoencoder_dir) / "model.safetensors")
        self.autoencoder.load_state_dict({k: v for k, v in weights.items() if not k.startswith("discriminator.")})

    def loss(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The pixel family's loss on the pictures' scaled latents."""
        latents = self.autoencoder.encode(images) * self.config.latent_scale
        return super().loss(latents.to(images.dtype), ids, empty_ids, generator)

    @torch.no_grad()
    def match(self, images: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor | None,
              noise: torch.Tensor) -> torch.Tensor:
        """The pixel family's match() on the pictures' scaled latents (`noise` in the latents' shape)."""
        return super().match(self.autoencoder.encode(images) * self.config.latent_scale, ids, empty_ids, noise)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, empty_ids: torch.Tensor, noise: torch.Tensor,
                 steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
                 init: torch.Tensor | None = None, strength: float = 1.0, mask: torch.Tensor | None = None,
                 progress=None):
        """Pictures in [-1, 1] (B, 3, S, S) from token ids (B, L) and starting latent noise (B, C, s, s).
        Image-to-image and inpainting work on the `init` pictures' latents; a latent cell is drawn
        where any of its pixels is in the `mask` (the pipeline puts the pixels outside it back)."""
        if init is not None:
            init = self.autoencoder.encode(init) * self.config.latent_scale
            if mask is not None:
                mask = F.adaptive_max_pool2d(mask, init.shape[-1])
        latents = super().generate(ids, empty_ids, noise, steps, guidance, sampler, init, strength, mask, progress)
        return self.autoencoder.decode(latents / self.config.latent_scale)


def prepare(train_config, overrides: dict, device, quiet: bool, saved: LatentDiffusionConfig | None = None):
    """Before training: the autoencoder given by `--autoencoder`, or a first stage that trains one into
    OUT/autoencoder with `autoencoder_share` of a time budget (the same step count with --steps). On
    resume (`saved`), the latent model takes the budget share it had."""
    from ..checkpoint import UserError
    from ..training import FirstStage, after_first_stage, first_stage_config
    stage = Path(train_config.out) / "autoencoder"
    share = overrides.get("autoencoder_share", LatentDiffusionConfig.autoencoder_share)
    if not 0 < share < 1:
        raise UserError(f"--set autoencoder_share={share}: expected a number between 0 and 1")
    if saved is not None:  # the autoencoder it was trained with stays; a trained one took its share of the budget
        trained = Path(saved.autoencoder_dir).resolve() == (stage / "model").resolve()
        return (after_first_stage(train_config, saved.autoencoder_share) if trained else train_config), {}
    if overrides.get("autoencoder_dir"):
        return train_config, with_autoencoder(overrides, overrides["autoencoder_dir"], train_config)
    ae_config = first_stage_config(train_config, "autoencoder", stage, share, preset=train_config.preset)

    def then(model_dir):  # the latent model takes what the autoencoder left of a time budget
        latent = after_first_stage(train_config, share)
        return latent, with_autoencoder(overrides, model_dir, latent)

    return FirstStage(ae_config, then, "the autoencoder", "the latent diffusion transformer")


def with_autoencoder(overrides: dict, model_dir, train_config) -> dict:
    """The overrides with the autoencoder in `model_dir`, once checked, and the scale that gives its
    latents of the first training pictures unit variance."""
    from ..checkpoint import UserError
    from ..data import get_dataset
    from ..images import to_tensor
    from ..pipeline import Pipeline
    autoencoder = Pipeline.load(model_dir, device="cpu")
    if autoencoder.family != "autoencoder":
        raise UserError(f"--autoencoder {model_dir}: a {autoencoder.family} model, not an autoencoder")
    if autoencoder.image_size != train_config.size:
        raise UserError(f"the autoencoder in {model_dir} works at {autoencoder.image_size} px, "
                        f"not --size {train_config.size}")
    dataset = get_dataset(train_config.data, train_config.size, train_config.seed, train_config.format or None, True,
                          fit=train_config.fit, caption_column=train_config.caption_column)
    latents = autoencoder.model.encode(to_tensor(dataset.batch(0, 256)[0]))
    return overrides | {"autoencoder_dir": str(Path(model_dir).resolve()), "autoencoder": autoencoder.model.config,
                        "latent_scale": float(1 / latents.std())}


FAMILY = Family(
    "latent-diffusion", LatentDiffusionConfig, LatentDiffusion, PRESETS, prepare=prepare, edits=True, steps=True,
    flags=(Flag("autoencoder", "autoencoder_dir", metavar="MODEL", path=True,
                help="an autoencoder trained before (RUN/model of --model autoencoder) instead of training one "
                     "first"), TEXT_ENCODER_FLAG))
