"""Model families behind one interface.

A family module exposes `Config` (a dataclass), `Model` (an nn.Module built from it, with
`loss(images, ids, empty_ids, generator)` and `generate(ids, empty_ids, noise, ...)`) and `PRESETS`
(named sizes as nested config overrides). A model that scores rather than draws (CLIP) or an
image tokenizer (vqvae: `encode` pictures to codes, `decode` codes to pictures) sets
`generates = False` and has no `generate`. Optional: `TRAIN_DEFAULTS` (TrainConfig fields the family
wants changed, e.g. a GAN's learning rate), `Model.param_groups(weight_decay)` (its own optimizer
groups, with an `lr_scale` each), `Model.log_fields` and `Model.log_values()` (extra columns for the training log) and
`Model.health()` (a warning when training has gone wrong, such as a collapsed GAN). A super-resolution
stage (diffusion-sr) also takes `low` pictures in `generate`, and draws from prompts alone only as the
second stage of a cascade (`generates` is then true; see pipeline.Pipeline.base).
"""
from __future__ import annotations

import importlib

from ..checkpoint import UserError

FAMILIES = {"diffusion": "dreamlet.models.diffusion", "diffusion-sr": "dreamlet.models.diffusion.super_resolution",
            "gan": "dreamlet.models.gan",
            "gan-hash": "dreamlet.models.gan_hash", "dalle": "dreamlet.models.dalle", "clip": "dreamlet.models.clip",
            "vqvae": "dreamlet.models.vqvae"}


def get_family(name: str):
    if name not in FAMILIES:
        raise UserError(f"unknown --model {name!r}; choose one of: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])
