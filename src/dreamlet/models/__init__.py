"""Model families behind one interface, and the registry that names them.

Each family module ends with one declaration, `FAMILY = Family(...)`: its config dataclass, its
model class, its size presets, and what the rest of dreamlet needs to know about it (the
`dreamlet train` flags it adds, whether it draws pictures, a first stage to train, its own
evaluation, the migrations of its saved configs). The CLI, the pipeline and the training loop read
these declarations and never branch on a family's name: adding a family is one module and one line
in `FAMILIES` (docs/architecture.md walks through an example).

A model (`Family.model`, an nn.Module built from a `Family.config`) has
`loss(images, ids, empty_ids, generator) -> scalar` and, when it draws,
`generate(ids, empty_ids, noise, steps=, guidance=, sampler=) -> pictures in [-1, 1]`. Optional
model methods: `param_groups(weight_decay)` (its own optimizer groups, each with an `lr_scale`),
`log_fields` / `log_values()` (extra training-log columns), `health()` (a warning when training
has gone wrong, such as a collapsed GAN), `match(images, ids, noise) -> (B,)` (how well each picture
fits its caption in its own judgement: the pipeline reranks by it without a CLIP, drawing the config's
`rerank` candidates by default).
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Callable

from ..checkpoint import UserError
from ..config import from_dict

FAMILIES = {"diffusion": "dreamlet.models.diffusion", "diffusion-sr": "dreamlet.models.diffusion.super_resolution",
            "gan": "dreamlet.models.gan", "gan-hash": "dreamlet.models.gan_hash", "dalle": "dreamlet.models.dalle",
            "clip": "dreamlet.models.clip", "vqvae": "dreamlet.models.vqvae",
            "autoencoder": "dreamlet.models.autoencoder", "latent-diffusion": "dreamlet.models.latent_diffusion"}


@dataclass(frozen=True)
class Flag:
    """A `dreamlet train` option of a family's own: `--NAME VALUE` sets the model config field
    `field` (dotted for a nested one, e.g. "text.pretrained")."""
    name: str                        # the flag without dashes, e.g. "arch"
    field: str                       # the config field it sets
    help: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    path: bool = False               # a file or folder: stored as an absolute path


@dataclass(frozen=True)
class Family:
    """What a family module declares about itself (its module's `FAMILY`)."""
    name: str                        # the `--model` name
    config: type                     # the config dataclass (saved as config.json's "model")
    model: type                      # the nn.Module built from a config
    presets: dict                    # named sizes: nested overrides of the config's defaults
    train_defaults: dict = field(default_factory=dict)  # TrainConfig fields it wants changed (a GAN's lr ...)
    flags: tuple[Flag, ...] = ()     # its own `dreamlet train` options
    # Draws pictures from prompts (Pipeline.draw, sample, the shapes judge): a bool, or a function of
    # the model's config for a family that draws only in some setups (a super-resolution stage: in a cascade).
    draws: bool | Callable[[object], bool] = True
    # Draws with classifier-free guidance: its generate() reads `empty_ids` as the unconditional branch's
    # captions, where a negative prompt takes the empty caption's place.
    guided: bool = True
    # Edits given pictures: generate(..., init=, strength=, mask=) draws image-to-image and inpainting.
    edits: bool = False
    # Draws in steps: generate(..., progress=) calls progress(i, n) after step i of n (a progress bar, the
    # page's; an exception raised there stops the drawing). Others report once a batch is drawn.
    steps: bool = False
    scores: bool = False             # scores pictures against captions (a CLIP: reranking, eval --clip)
    upsamples: bool = False          # upsamples given pictures (Pipeline.upsample: generate(..., low=, low_noise=))
    does_instead: str = ""           # when it does not draw: what it does, for the one-line refusal
    # Before this family's own training: prepare(train_config, overrides, device, quiet, saved=None) ->
    # (train_config, overrides), or a training.FirstStage, a model the loop trains first (dalle's image
    # tokenizer) whose then(model_dir) returns them.
    prepare: Callable | None = None
    # `dreamlet eval` for a family the drawing evaluations do not fit: evaluate(args, pipeline) -> (report, line),
    # from the parsed `dreamlet eval` options and the loaded model: the report dict (written as .json and .md)
    # and the one line of figures the command prints.
    evaluate: Callable | None = None
    # The image tokenizer in a model of this family (a module with encode(pictures) -> codes and
    # decode(codes) -> pictures), whose codes `dreamlet sample --method vqgan-clip` optimises: model -> module.
    image_tokenizer: Callable | None = None
    # config.json's "model" written today has `config_version` = version; migrations[v] turns a version-v
    # config dict into a version v + 1 one (or raises UserError when the model cannot be loaded any more).
    version: int = 1
    migrations: dict[int, Callable[[dict], dict]] = field(default_factory=dict)
    renames: dict[int, dict[str, str]] = field(default_factory=dict)  # {v: {old prefix: new}} of version-v weights

    def can_draw(self, config) -> bool:
        return self.draws(config) if callable(self.draws) else self.draws

    def refuse_to_draw(self, config) -> None:
        """One line (UserError) when a model with this config does not draw from prompts."""
        if not self.can_draw(config):
            article = "an" if self.name[0] in "aeiou" else "a"
            raise UserError(f"{article} {self.name} model does not draw pictures from prompts"
                            + (f": {self.does_instead}" if self.does_instead else ""))

    def load_config(self, data: dict, version: int | None):
        """The config dataclass from a saved dict of `config_version` `version` (None: before versions, 1),
        through the migrations to today's version. Unknown fields raise ValueError (config.from_dict)."""
        version = 1 if version is None else int(version)
        if version > self.version:
            raise UserError(f"this {self.name} model was saved by a newer dreamlet (config version {version}, "
                            f"this one reads up to {self.version}); upgrade dreamlet")
        for v in range(version, self.version):
            data = self.migrations[v](copy.deepcopy(data))
        return from_dict(self.config, data)

    def load_weights(self, tensors: dict, version: int | None) -> dict:
        """A state dict saved with config version `version` (None: 1), its tensors renamed to today's names."""
        for v in range(1 if version is None else int(version), self.version):
            for old, new in self.renames.get(v, {}).items():
                tensors = {new + k[len(old):] if k.startswith(old) else k: t for k, t in tensors.items()}
        return tensors


def removed(data: dict, *paths: str) -> dict:
    """A migration step: `data` without the dotted fields `paths` (those that are there)."""
    for path in paths:
        *parents, leaf = path.split(".")
        node = data
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"unknown --model {name!r}; choose one of: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY


def families_that(test: Callable[[Family], bool]) -> list[str]:
    """The names of the registered families that pass `test`, e.g. `families_that(lambda f: f.scores)`."""
    return [name for name in FAMILIES if test(get_family(name))]


def listed(names: list[str], word: str = "or") -> str:
    """["a"] -> "a"; ["a", "b", "c"] -> "a, b or c" (for one-line messages that name families)."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"
