"""A trained model ready to draw: weights + config + tokenizer, loaded from a model directory.

A cascade (Imagen-style) is a super-resolution stage whose model directory holds the stage before it
in `base/`: the base stage draws the prompts at its size, and this stage upsamples its pictures.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoint import (UserError, load_tensors, read_json, restore_interrupted, save_json, save_tensors,
                         write_dir_atomically)
from .config import to_dict
from .images import to_tensor, to_uint8
from .models import families_that, get_family, listed
from .text.tokenizer import CaptionTokenizer, load_tokenizer

MAX_PROMPT_CHARS = 1000


def pick_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


PRECISIONS = ("auto", "fp32", "bf16")


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast where asked, or on a GPU by default ("auto"); fp32 otherwise (safe on any CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, torch.bfloat16, enabled=bf16)


MAX_SEED = 2 ** 63 - 1


def seed_jobs(prompts: list[str], seed: int, num: int, steps: int | None = None,
              rerank: int = 1) -> list[tuple[str, int]]:
    """The (prompt, seed) of every picture, in seed order: picture k of prompt i gets seed
    `seed + len(prompts) * k + i`. Checks the counts a user gives (num, steps, rerank) on the way."""
    for name, value in (("num", num), ("rerank", rerank), ("steps", 1 if steps is None else steps)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1")
    if not 0 <= seed <= MAX_SEED - len(prompts) * num:  # every picture's seed must fit torch's 64 bits
        raise UserError(f"--seed must be between 0 and {MAX_SEED - len(prompts) * num}, not {seed}")
    return sorted(((p, seed + len(prompts) * k + i) for k in range(num) for i, p in enumerate(prompts)),
                  key=lambda job: job[1])


def candidate_seeds(seed: int, rerank: int) -> list[int]:
    """The seeds of a picture's `rerank` candidates when it is the best of them: rerank * seed + c
    (modulo 2^64, torch's seed range)."""
    return [(rerank * seed + c) % 2 ** 64 for c in range(rerank)]


def stage_seed(seed: int, size: int) -> int:
    """The seed of a picture's noise in a cascade's later stage, from the picture's seed and the stage's
    size: each stage draws its own noise, not the base stage's again in another shape."""
    return int(np.random.SeedSequence([seed % 2 ** 64, size]).generate_state(1)[0])


@dataclass
class PipelineOutput:
    """What a pipeline call returns (diffusers' habit): `.images`, and beside them the prompt, seed and
    negative prompt of each picture, each reranked winner's CLIP score (None without reranking) and the
    settings that drew them. It reads as the images themselves: `out[0]`, `len(out)`, `for image in out`."""
    images: list | np.ndarray | torch.Tensor  # PIL images, (N, S, S, 3) uint8, or (N, 3, S, S) floats in [0, 1]
    prompts: list[str]
    seeds: list[int]
    negative_prompts: list[str]
    scores: list
    settings: dict                            # model, steps, guidance, sampler as used (defaults filled in)

    @property
    def jobs(self) -> list[tuple[str, int]]:
        return list(zip(self.prompts, self.seeds))

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return iter(self.images)

    def __getitem__(self, index):
        return self.images[index]


@dataclass
class Edit:
    """Image-to-image and inpainting: the start picture, where to draw, and how far down the noise
    schedule the start goes (1: from pure noise, as plain sampling; 0: the picture as it is)."""
    image: np.ndarray                 # (S, S, 3) uint8, at the model's size
    mask: np.ndarray | None = None    # (S, S) bool, True where to draw; None: everywhere
    strength: float = 0.8


def read_picture(picture, size: int, fit: str, mask: bool = False) -> np.ndarray:
    """A path, PIL image or uint8 array -> (size, size, 3) uint8 RGB made square as the model's training
    pictures were (`fit`); a mask -> (size, size) bool, True where it is light (where to draw)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture.astype(np.uint8))
    elif not isinstance(picture, Image.Image):
        try:
            with Image.open(picture) as opened:
                picture = opened.copy()
        except (OSError, ValueError, UnidentifiedImageError):
            raise UserError(f"cannot read {picture} as a picture") from None
    if mask:  # the same geometry as the picture's, with nothing to draw where it is padded
        grey = picture.convert("L")
        square = ImageOps.pad(grey, (size, size), Image.NEAREST, color=0) if fit == "pad" else \
            ImageOps.fit(grey, (size, size), Image.NEAREST)
        return np.asarray(square) > 127
    from .data.decode import fit_square
    return fit_square(picture, size, fit)


# diffusers' argument names, accepted beside dreamlet's own
ALIASES = {"num_inference_steps": "steps", "guidance_scale": "guidance", "num_images_per_prompt": "num",
           "output_type": "output", "negative_prompt": "negative"}
OUTPUTS = {"pil": "pil", "numpy": "numpy", "np": "numpy", "tensor": "tensor", "pt": "tensor"}


def per_prompt(text: str | list[str] | None, prompts: list[str], name: str) -> list[str]:
    """A negative prompt given once for all prompts, or one per prompt, as a list with one per prompt."""
    if text is None or isinstance(text, str):
        return [text or ""] * len(prompts)
    if len(text) != len(prompts):
        raise UserError(f"{len(text)} {name}s for {len(prompts)} prompts: give one, or one per prompt")
    return [str(t) for t in text]


class Pipeline:
    """A model directory loaded and ready to draw (`dreamlet.load`): call it with prompts."""

    def __init__(self, family: str, model, tokenizer: CaptionTokenizer, meta: dict, precision: str = "auto",
                 base: "Pipeline | None" = None):
        self.family, self.model, self.tokenizer, self.meta = family, model, tokenizer, meta
        self.precision = precision
        self.path: Path | None = None  # the model directory it was loaded from
        # A cascade's super-resolution stage upsamples the pictures of its base stage: loaded from
        # MODEL/base, or, for one in training, from the copy its config names (OUT/base).
        self.base = base
        if base is None and getattr(model.config, "base", ""):
            self.base = Pipeline.load(model.config.base, device=str(self.device))

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sizes(self) -> list[int]:
        """The sizes this pipeline draws at: its own, and in a cascade each earlier stage's."""
        return (self.base.sizes if self.base is not None else []) + [self.image_size]

    def at_size(self, size: int | None) -> "Pipeline":
        """This pipeline, or the stage of its cascade that draws at `size` px (to sample or judge a
        cascade's base stage alone); None: this one."""
        stage = self
        while stage is not None:
            if size is None or size == stage.image_size:
                return stage
            stage = stage.base
        if self.base is None:
            raise UserError(f"this model was trained at {self.image_size} px, not {size} px")
        raise UserError(f"this cascade draws at {' or '.join(map(str, self.sizes))} px, not {size} px")

    @classmethod
    def load(cls, model_dir: str | Path, device: str | None = None) -> "Pipeline":
        model_dir = Path(model_dir)
        restore_interrupted(model_dir)  # a crash while it was being replaced left the previous one aside
        if not model_dir.is_dir():
            raise UserError(f"model directory not found: {model_dir}")
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (model_dir / name).is_file():
                raise UserError(f"{model_dir} is not a dreamlet model directory: {name} is missing")
        meta = read_json(model_dir / "config.json")
        family = get_family(meta.get("family", "?"))
        try:
            config = family.load_config(meta["model"], meta.get("config_version"))
            model = family.model(config)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise UserError(f"{model_dir / 'config.json'} does not describe a {meta['family']} model: "
                            f"{type(error).__name__}: {str(error).strip().splitlines()[0]}") from None
        weights = load_tensors(model_dir / "model.safetensors")  # not a safetensors file: UserError
        weights = family.load_weights(weights, meta.get("config_version"))  # saved by an earlier dreamlet
        try:
            model.load_state_dict(weights)
        except Exception as error:  # weights of another model: say so in one line
            raise UserError(f"cannot load weights from {model_dir / 'model.safetensors'}: "
                            f"{str(error).splitlines()[0]}") from None
        base = None
        if getattr(config, "base", ""):  # the stage before this one travels in base/
            if not (model_dir / "base").is_dir():
                raise UserError(f"{model_dir} is a cascade's upsampling stage, but its base stage "
                                f"({model_dir / 'base'}) is missing")
            base = cls.load(model_dir / "base", device)
            if base.image_size != config.low_size:
                raise UserError(f"sizes do not chain: {model_dir / 'base'} draws {base.image_size} px pictures, "
                                f"and {model_dir} upsamples {config.low_size} px ones")
        tokenizer = load_tokenizer(model_dir / "tokenizer.json", getattr(config, "text", None))  # none: a vqvae
        pipeline = cls(meta["family"], model.to(pick_device(device)).eval(), tokenizer, meta, base=base)
        pipeline.path = model_dir
        return pipeline

    def save(self, model_dir: str | Path, state_dict: dict | None = None) -> None:
        """Write config.json, model.safetensors (the given weights, EMA by default), tokenizer.json and the
        model card (README.md)."""
        def write(tmp: Path):
            from .card import write_card
            meta = self.meta | {"family": self.family, "dreamlet": __version__,
                                "config_version": get_family(self.family).version, "model": to_dict(self.model.config)}
            save_json(tmp / "config.json", meta)
            write_card(tmp, meta, Path(model_dir))  # README.md: what it is, how it was trained and scored, how to load
            save_tensors(tmp / "model.safetensors", state_dict or self.model.state_dict())
            self.tokenizer.save(tmp / "tokenizer.json")
            if self.base is not None:  # a cascade: the model directory carries its base stage
                self.base.save(tmp / "base")
        write_dir_atomically(Path(model_dir), write)

    def check_prompts(self, prompts: list[str]) -> list[str]:
        checked = []
        for prompt in prompts:
            prompt = " ".join(str(prompt).split())
            if not prompt:
                raise UserError("empty prompt: give some text to draw")
            checked.append(prompt[:MAX_PROMPT_CHARS])  # the tokenizer keeps only the first tokens anyway
        return checked

    def to(self, device: str | torch.device) -> "Pipeline":
        """Move the model (and a cascade's earlier stages) to a device ("cuda", "cpu"); returns the pipeline."""
        self.model.to(device)
        if self.base is not None:
            self.base.to(device)
        return self

    def __call__(self, prompt: str | list[str], seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, num: int = 1, sampler: str | None = None, rerank: int | None = None,
                 clip=None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output: str = "pil",
                 negative: str | list[str] | None = None, image=None, mask_image=None, strength: float | None = None,
                 progress=None, **diffusers_names) -> PipelineOutput:
        """Draw `num` pictures for each prompt (prompt by prompt, then the next round): a PipelineOutput
        whose `.images` are PIL images, or with output="numpy" a (N, S, S, 3) uint8 array, "tensor" a
        (N, 3, S, S) float tensor in [0, 1]. Picture k of prompt i gets seed `seed + len(prompts) * k + i`;
        a `generator` draws `seed`, and a list of them (one per picture) draws each picture's seed.
        `negative` (a prompt, or one per prompt) takes the empty caption's place in classifier-free
        guidance: the pictures move away from it. `rerank` K > 1 keeps the best of K candidates by the
        CLIP model `clip` (a directory or ClipScorer), or without one by the model's own judgement
        (None: the model's default, 4 for a diffusion model; 1 draws each picture alone). `image` (a
        path, PIL image or array) draws image-to-image from it, `strength` (0.8) down the noise
        schedule; with `mask_image` (light where to draw) it inpaints (strength 1 by default).
        `progress(fraction)` is called as drawing goes (after every sampler step, 0 to 1 over the whole
        call); an exception raised there stops the drawing and comes out of the call (a cancel button's
        way). diffusers' names work too: num_inference_steps, guidance_scale, num_images_per_prompt,
        negative_prompt, output_type ("pil", "np", "pt").

            pipe = dreamlet.load("runs/demo/model")
            images = pipe("a large red circle at the top left", num=4, seed=1).images
        """
        options = dict(steps=steps, guidance=guidance, num=num, output=output, negative=negative)
        defaults = dict(steps=None, guidance=None, num=1, output="pil", negative=None)
        for name, value in diffusers_names.items():
            if name not in ALIASES:
                raise TypeError(f"Pipeline() got an unexpected keyword argument {name!r}")
            own = ALIASES[name]
            if options[own] != defaults[own]:
                raise TypeError(f"Pipeline() got both {name!r} and its dreamlet name {own!r}")
            options[own] = value
        if OUTPUTS.get(options["output"]) is None:
            raise UserError(f"unknown output {options['output']!r}; expected pil, numpy (np) or tensor (pt)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = None
        if isinstance(generator, (list, tuple)):  # one generator per picture: each one draws its picture's seed
            if len(generator) != len(prompts) * options["num"]:
                raise UserError(f"{len(generator)} generators for {len(prompts) * options['num']} pictures: "
                                "give one, or one per picture")
            seeds = [int(torch.randint(0, 2 ** 31 - 1, (), generator=g)) for g in generator]
        elif generator is not None:
            seed = int(torch.randint(0, 2 ** 31 - 1, (), generator=generator))
        edit = self.edit(image, mask_image, strength) if image is not None else None
        if edit is None and (mask_image is not None or strength is not None):
            raise UserError("mask_image and strength edit a picture: give image= as well")
        drawn = self.run(prompts, seed, options["num"], options["steps"], options["guidance"], sampler, rerank, clip,
                         negative=options["negative"], seeds=seeds, edit=edit, progress=progress)
        kind = OUTPUTS[options["output"]]
        if kind == "pil":
            from PIL import Image
            drawn.images = [Image.fromarray(image) for image in drawn.images]
        elif kind == "tensor":
            drawn.images = torch.from_numpy(drawn.images).permute(0, 3, 1, 2).float() / 255
        return drawn

    def edit(self, image, mask=None, strength: float | None = None) -> Edit:
        """An Edit for this model from a picture and an optional mask (paths, PIL images or arrays), made
        square as its training pictures were; strength 0.8 by default, 1 when inpainting."""
        family = get_family(self.family)
        if not family.edits or self.base is not None:
            editing = families_that(lambda other: other.edits)
            raise UserError(f"a {'cascade' if self.base is not None else self.family} model does not edit pictures; "
                            f"a {listed(editing)} model does (image-to-image, inpainting)")
        strength = (1.0 if mask is not None else 0.8) if strength is None else float(strength)
        if not 0 <= strength <= 1:
            raise UserError(f"strength must be between 0 and 1, not {strength}")
        fit = self.meta.get("train", {}).get("fit") or "crop"
        picture = read_picture(image, self.image_size, fit)
        return Edit(picture, None if mask is None else read_picture(mask, self.image_size, fit, mask=True), strength)

    def settings(self, steps: int | None = None, guidance: float | None = None, sampler: str | None = None) -> dict:
        """The settings a drawing used, with this model's defaults for those not given (None where the
        family has no such setting, as a GAN has no steps), and how guidance changes with the noise level
        where the model's does (diffusion's `guidance_detail`)."""
        config = self.model.config
        given = dict(steps=steps, guidance=guidance, sampler=sampler)
        detail = {"guidance_detail": config.guidance_detail} if hasattr(config, "guidance_detail") else {}
        return {"model": str(self.path) if self.path else None, "family": self.family} | {
            name: value if value is not None else getattr(config, name, None) for name, value in given.items()} | detail

    def run(self, prompts: list[str], seed: int = 0, num: int = 1, steps: int | None = None,
            guidance: float | None = None, sampler: str | None = None, rerank: int | None = None, clip=None,
            negative: str | list[str] | None = None, seeds: list[int] | None = None,
            edit: Edit | None = None, progress=None) -> PipelineOutput:
        """What `__call__` and `dreamlet sample` both do: the (prompt, seed) of every picture (`seeds`: given
        ones, one per picture in drawing order), the pictures as a uint8 array, and with reranking (`rerank`
        K > 1; None: the model's default) the best of K candidates, by the CLIP `clip` (with each winner's
        CLIP score, DALL-E's best-of-K) or by the model's own judgement."""
        rerank = self.default_rerank(rerank)
        prompts = self.check_prompts(prompts)
        negatives = per_prompt(negative, prompts, "negative prompt")
        self.check_negative(negatives)
        jobs = seed_jobs(prompts, seed, num, steps, rerank)
        if seeds is not None:
            jobs = [(prompts[j % len(prompts)], int(s)) for j, s in enumerate(seeds)]
        negatives = [negatives[j % len(prompts)] for j in range(len(jobs))]  # jobs go prompt by prompt, round by round
        settings = self.settings(steps, guidance, sampler) | ({"strength": edit.strength} if edit else {})
        if rerank == 1:
            images = self.draw([p for p, _ in jobs], [s for _, s in jobs], steps=steps, guidance=guidance,
                               sampler=sampler, negative=negatives, edit=edit, progress=progress)
            return PipelineOutput(images, [p for p, _ in jobs], [s for _, s in jobs], negatives, [None] * len(jobs),
                                  settings)
        return self.best_of(jobs, rerank, clip, steps, guidance, sampler, negatives, settings, edit, progress)

    def check_negative(self, negatives: list[str]) -> None:
        """One line when a negative prompt is given to a model that has no unconditional branch for it."""
        if any(negatives) and not get_family(self.family).guided:
            guided = families_that(lambda family: family.guided and family.draws)
            raise UserError(f"a {self.family} model draws without classifier-free guidance, so it has no use for "
                            f"a negative prompt ({listed(guided)} models have)")

    def pictures(self, prompts: list[str], seeds: list[int], steps: int | None = None, guidance: float | None = None,
                 sampler: str | None = None, rerank: int | None = None, clip=None) -> np.ndarray:
        """One picture per (prompt, seed), (N, S, S, 3) uint8, as this model draws by default: the best of its
        `rerank` candidates (None: default_rerank()), by the CLIP `clip` or by its own judgement."""
        rerank = self.default_rerank(rerank)
        if rerank < 1:
            raise UserError("--rerank must be at least 1")
        if rerank == 1:
            return self.draw(prompts, seeds, steps=steps, guidance=guidance, sampler=sampler)
        return self.best_of(list(zip(prompts, seeds)), rerank, clip, steps, guidance, sampler).images

    def default_rerank(self, rerank: int | None = None) -> int:
        """How many candidates this model draws per picture: `rerank` when given, else its config's
        `rerank` (1 for a model that cannot judge its own pictures)."""
        if rerank is not None:
            return rerank
        return getattr(self.model.config, "rerank", 1) if self.judges_itself() else 1

    def judges_itself(self) -> bool:
        """Whether the model can say which of its pictures fits a caption best (`match`)."""
        return getattr(self.model, "judges_itself", hasattr(self.model, "match"))

    def match_noise(self, seed: int) -> torch.Tensor:
        """The noise the model's own judgement (`match`) uses for every candidate of the picture with
        this seed, in the shape of one picture's starting noise."""
        shape = getattr(self.model, "noise_shape", (3, self.image_size, self.image_size))
        return torch.randn(shape, generator=torch.Generator().manual_seed(stage_seed(seed, 1)))

    def best_of(self, jobs: list[tuple[str, int]], rerank: int, clip=None, steps: int | None = None,
                guidance: float | None = None, sampler: str | None = None, negative: list[str] | None = None,
                settings: dict | None = None, edit: Edit | None = None, progress=None) -> PipelineOutput:
        """For each (prompt, seed) job, draw `rerank` candidates (seeds rerank * seed + c) and keep the
        one that matches its prompt best: by the CLIP model `clip` (a directory or ClipScorer), or without
        one by the model's own `match` (a diffusion model's denoising error under the caption, a DALL-E
        prior's likelihood of the codes under the caption against the empty one). A CLIP's
        pick carries its own seed (which draws it alone, with its CLIP score); the model's own pick carries
        the job's seed, which draws it again with the same `rerank`, as a seed does without reranking."""
        choose = self.clip_chooser(clip) if clip else self.own_chooser()
        negative = negative or [""] * len(jobs)
        candidates = [(p, c) for p, s in jobs for c in candidate_seeds(s, rerank)]
        drawn = self.draw([p for p, _ in candidates], [s for _, s in candidates], steps=steps, guidance=guidance,
                          sampler=sampler, negative=[n for n in negative for _ in range(rerank)], edit=edit,
                          progress=progress)
        images, seeds, scores = [], [], []
        for j, (prompt, seed) in enumerate(jobs):
            group = drawn[j * rerank:(j + 1) * rerank]
            similarity, clip_score = choose(group, prompt, seed)
            best = int(similarity.argmax())
            images.append(group[best])
            seeds.append(candidates[j * rerank + best][1] if clip else seed)
            scores.append(round(100 * float(similarity[best]), 2) if clip_score else None)
        return PipelineOutput(np.stack(images), [p for p, _ in jobs], seeds, list(negative), scores,
                              (settings or self.settings(steps, guidance, sampler))
                              | {"candidates": rerank, "chosen_by": "clip" if clip else "model"})

    def clip_chooser(self, clip):
        from .scoring import ClipScorer
        scorer = clip if isinstance(clip, ClipScorer) else ClipScorer(clip)
        return lambda group, prompt, seed: (scorer.match(group, prompt), True)

    def own_chooser(self):
        """(candidates (K, S, S, 3) uint8, prompt, job seed) -> (the model's match per candidate, False).
        The K candidates share one noise (which a diffusion model's judgement uses), drawn from the job's seed."""
        if not self.judges_itself():  # a model with match() that cannot use it (a maskgit prior) names its sampler
            kind = self.family + (f" model decoding with {self.model.config.sampler}" if hasattr(self.model, "match")
                                  else " model")
            raise UserError(f"a {kind} cannot judge its own pictures: rerank with a CLIP, --clip "
                            f"CLIPMODEL (train one with --model {listed(families_that(lambda family: family.scores))})")

        empty = self.tokenizer([""]).to(self.device)

        @torch.no_grad()
        def choose(group: np.ndarray, prompt: str, seed: int):
            noise = self.match_noise(seed).expand(len(group), -1, -1, -1).to(self.device)
            ids = self.tokenizer([prompt] * len(group)).to(self.device)
            with autocast(self.device, self.precision):
                match = self.model.match(to_tensor(group).to(self.device), ids, empty, noise)
            return match.float().cpu().numpy(), False
        return choose

    @torch.no_grad()
    def draw(self, prompts: list[str], seeds: list[int], steps: int | None = None, guidance: float | None = None,
             sampler: str | None = None, batch_size: int = 64, negative: str | list[str] | None = None,
             edit: Edit | None = None, progress=None) -> np.ndarray:
        """One picture per (prompt, seed): (N, S, S, 3) uint8. A seed fixes its picture's starting noise;
        `negative`: the negative prompt of every picture, or of each; `edit`: a picture each one starts
        from (image-to-image), and where to draw in it (inpainting: the rest stays exactly as it is);
        `progress(fraction)`: how far the drawing is, after every sampler step and every batch."""
        get_family(self.family).refuse_to_draw(self.model.config)  # one line for a model that does not draw
        prompts = self.check_prompts(prompts)
        negative = per_prompt(negative, prompts, "negative prompt")
        self.check_negative(negative)
        if edit is not None and edit.strength == 0:  # no step at all: the picture as it is
            return np.repeat(edit.image[None], len(prompts), axis=0)
        starts = range(0, len(prompts), batch_size)
        batches = []
        for b, i in enumerate(starts):
            in_batch = None if progress is None else lambda f, b=b: progress((b + f) / len(starts))
            batches.append(to_uint8(self.generate(prompts[i:i + batch_size], seeds[i:i + batch_size], steps, guidance,
                                                  sampler, negative=negative[i:i + batch_size], edit=edit,
                                                  progress=in_batch)))
            if progress is not None:
                progress((b + 1) / len(starts))
        images = np.concatenate(batches)
        if edit is not None and edit.mask is not None:  # pixels outside the mask exactly as given (a latent
            images = np.where(edit.mask[None, :, :, None], images, edit.image[None])  # model redraws them)
        return images

    @torch.no_grad()
    def upsample(self, pictures: np.ndarray, prompts: list[str], seeds: list[int], steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, batch_size: int = 64) -> np.ndarray:
        """A super-resolution stage's pictures from given low-res ones: (N, s, s, 3) uint8 with one prompt
        and seed each -> (N, S, S, 3) uint8. A cascade's draw is exactly this on its base stage's draw."""
        if not get_family(self.family).upsamples:
            raise UserError(f"a {self.family} model does not upsample pictures; "
                            f"a {listed(families_that(lambda family: family.upsamples))} model does")
        low = self.model.config.low_size
        if pictures.ndim != 4 or pictures.shape[1:] != (low, low, 3):
            raise UserError(f"this model upsamples {low} x {low} RGB pictures, not {tuple(pictures.shape[1:])}")
        prompts = self.check_prompts(prompts)
        return np.concatenate([to_uint8(self.generate(prompts[i:i + batch_size], seeds[i:i + batch_size], steps,
                                                      guidance, sampler, to_tensor(pictures[i:i + batch_size])))
                               for i in range(0, len(prompts), batch_size)])

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None,
                 low: torch.Tensor | None = None, negative: list[str] | None = None,
                 edit: Edit | None = None, progress=None) -> torch.Tensor:
        """One batch of pictures, (B, 3, S, S) in [-1, 1]. A seed fixes its picture's starting noise. A
        super-resolution stage upsamples `low` (B, 3, s, s), by default its base stage's pictures for the
        same prompts and seeds, rounded to 8 bits as they would be saved. Steps, guidance, sampler and
        the negative prompts (one per picture: the unconditional branch's captions), when given, hold
        for every stage. `progress(fraction)` after every sampler step (a cascade's stages share it evenly)."""
        if low is None and self.base is not None:
            base_progress = None if progress is None else lambda f: progress(f / 2)
            low = to_tensor(to_uint8(self.base.generate(prompts, seeds, steps, guidance, sampler, negative=negative,
                                                        progress=base_progress)))
            progress = None if progress is None else lambda f, whole=progress: whole(0.5 + f / 2)
        S = self.image_size
        ids = self.tokenizer(prompts).to(self.device)
        empty = self.tokenizer(negative if negative and any(negative) else [""]).to(self.device)
        options = dict(steps=steps, guidance=guidance, sampler=sampler)
        generators = [torch.Generator().manual_seed(int(s) if low is None else stage_seed(int(s), S)) for s in seeds]
        shape = getattr(self.model, "noise_shape", (3, S, S))  # a latent model starts from latent noise
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        if edit is not None:
            options |= dict(init=to_tensor(np.repeat(edit.image[None], len(prompts), axis=0)).to(self.device),
                            strength=edit.strength)
            if edit.mask is not None:
                mask = torch.from_numpy(edit.mask).float()[None, None].expand(len(prompts), 1, S, S)
                options["mask"] = mask.to(self.device)
        if low is not None:
            options |= dict(low=low.to(self.device), low_noise=torch.stack(
                [torch.randn(low.shape[1:], generator=g) for g in generators]).to(self.device))
        if progress is not None and get_family(self.family).steps:
            options["progress"] = lambda i, n: progress(i / n)
        with autocast(self.device, self.precision):
            return self.model.generate(ids, empty, noise, **options).float()
