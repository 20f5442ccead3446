"""A trained model ready to draw: weights + config + tokenizer, loaded from a model directory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoint import UserError, load_tensors, read_json, save_json, save_tensors, write_dir_atomically
from .config import from_dict, to_dict
from .images import to_uint8
from .models import get_family
from .text.tokenizer import CaptionTokenizer

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


def seed_jobs(prompts: list[str], seed: int, num: int, steps: int | None = None, rerank: int = 1) -> list[tuple[str, int]]:
    """The (prompt, seed) of every picture, in seed order: picture k of prompt i gets seed
    `seed + len(prompts) * k + i`. Checks the counts a user gives (num, steps, rerank) on the way."""
    for name, value in (("num", num), ("rerank", rerank), ("steps", 1 if steps is None else steps)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1")
    return sorted(((p, seed + len(prompts) * k + i) for k in range(num) for i, p in enumerate(prompts)),
                  key=lambda job: job[1])


@dataclass
class Drawn:
    jobs: list[tuple[str, int]]   # (prompt, seed) of each picture
    images: np.ndarray            # (N, S, S, 3) uint8
    scores: list                  # the CLIP score of each reranked winner (None without reranking)


class Pipeline:
    """A model directory loaded and ready to draw (`dreamlet.load`): call it with prompts."""

    def __init__(self, family: str, model, tokenizer: CaptionTokenizer, meta: dict, precision: str = "auto"):
        self.family, self.model, self.tokenizer, self.meta = family, model, tokenizer, meta
        self.precision = precision
        self.path: Path | None = None  # the model directory it was loaded from

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, model_dir: str | Path, device: str | None = None) -> "Pipeline":
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise UserError(f"model directory not found: {model_dir}")
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (model_dir / name).is_file():
                raise UserError(f"{model_dir} is not a dreamlet model directory: {name} is missing")
        meta = read_json(model_dir / "config.json")
        family = get_family(meta.get("family", "?"))
        config = from_dict(family.Config, meta["model"])
        model = family.Model(config)
        try:
            model.load_state_dict(load_tensors(model_dir / "model.safetensors"))
        except Exception as error:  # a truncated or foreign file: say so in one line
            raise UserError(f"cannot load weights from {model_dir / 'model.safetensors'}: {str(error).splitlines()[0]}")
        tokenizer = CaptionTokenizer.load(model_dir / "tokenizer.json", config.text.max_length)
        pipeline = cls(meta["family"], model.to(pick_device(device)).eval(), tokenizer, meta)
        pipeline.path = model_dir
        return pipeline

    def save(self, model_dir: str | Path, state_dict: dict | None = None) -> None:
        """Write config.json, model.safetensors (the given weights, EMA by default) and tokenizer.json."""
        def write(tmp: Path):
            save_json(tmp / "config.json", self.meta | {"family": self.family, "dreamlet": __version__,
                                                       "model": to_dict(self.model.config)})
            save_tensors(tmp / "model.safetensors", state_dict or self.model.state_dict())
            self.tokenizer.save(tmp / "tokenizer.json")
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
        """Move the model to a device ("cuda", "cpu"); returns the pipeline."""
        self.model.to(device)
        return self

    def __call__(self, prompt: str | list[str], seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 num: int = 1, sampler: str | None = None, rerank: int = 1, clip=None,
                 generator: torch.Generator | None = None, output: str = "pil"):
        """Draw `num` pictures for each prompt: a list of PIL images (prompt by prompt, then the next
        round), or with output="numpy" a (N, S, S, 3) uint8 array, "tensor" a (N, 3, S, S) float tensor in
        [0, 1]. Picture k of prompt i gets seed `seed + len(prompts) * k + i` (a `generator` draws `seed`);
        `rerank` K > 1 keeps the best of K candidates by the CLIP model `clip` (a directory or ClipScorer).

            pipe = dreamlet.load("runs/demo/model")
            images = pipe("a large red circle at the top left", num=4, seed=1)
        """
        if generator is not None:
            seed = int(torch.randint(0, 2 ** 31 - 1, (), generator=generator))
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        drawn = self.run(prompts, seed, num, steps, guidance, sampler, rerank, clip)
        if output == "pil":
            from PIL import Image
            return [Image.fromarray(image) for image in drawn.images]
        if output == "numpy":
            return drawn.images
        if output == "tensor":
            return torch.from_numpy(drawn.images).permute(0, 3, 1, 2).float() / 255
        raise UserError(f"unknown output {output!r}; expected pil, numpy or tensor")

    def run(self, prompts: list[str], seed: int = 0, num: int = 1, steps: int | None = None,
            guidance: float | None = None, sampler: str | None = None, rerank: int = 1, clip=None) -> "Drawn":
        """What `__call__` and `dreamlet sample` both do: the (prompt, seed) of every picture, the
        pictures, and with reranking each winner's CLIP score (DALL-E's best-of-K)."""
        if rerank > 1 and not clip:
            raise UserError("--rerank needs a CLIP model to choose with: --clip CLIPMODEL (train one with --model clip)")
        jobs = seed_jobs(self.check_prompts(prompts), seed, num, steps, rerank)
        if rerank == 1:
            images = self.draw([p for p, _ in jobs], [s for _, s in jobs], steps=steps, guidance=guidance, sampler=sampler)
            return Drawn(jobs, images, [None] * len(jobs))
        from .scoring import ClipScorer
        scorer = clip if isinstance(clip, ClipScorer) else ClipScorer(clip)
        candidates = [(p, rerank * s + c) for p, s in jobs for c in range(rerank)]
        drawn = self.draw([p for p, _ in candidates], [s for _, s in candidates], steps=steps, guidance=guidance,
                          sampler=sampler)
        images, chosen, scores = [], [], []
        for j, (prompt, _) in enumerate(jobs):
            group = drawn[j * rerank:(j + 1) * rerank]
            similarity = scorer.match(group, prompt)
            best = int(similarity.argmax())
            images.append(group[best])
            chosen.append((prompt, candidates[j * rerank + best][1]))
            scores.append(round(100 * float(similarity[best]), 2))
        return Drawn(chosen, np.stack(images), scores)

    @torch.no_grad()
    def draw(self, prompts: list[str], seeds: list[int], steps: int | None = None,
             guidance: float | None = None, sampler: str | None = None, batch_size: int = 64) -> np.ndarray:
        """One picture per (prompt, seed): (N, S, S, 3) uint8. A seed fixes its picture's starting noise."""
        if not getattr(self.model, "generates", True):
            what = {"clip": "it scores pictures against captions",
                    "vqvae": "it turns pictures into codes (train --model dalle with it)"}.get(self.family)
            raise UserError(f"a {self.family} model does not draw pictures from prompts" + (f": {what}" if what else ""))
        prompts = self.check_prompts(prompts)
        S, out = self.image_size, []
        empty = self.tokenizer([""]).to(self.device)
        for i in range(0, len(prompts), batch_size):
            ids = self.tokenizer(prompts[i:i + batch_size]).to(self.device)
            noise = torch.stack([torch.randn(3, S, S, generator=torch.Generator().manual_seed(int(s)))
                                 for s in seeds[i:i + batch_size]]).to(self.device)
            with autocast(self.device, self.precision):
                images = self.model.generate(ids, empty, noise, steps=steps, guidance=guidance, sampler=sampler)
            out.append(to_uint8(images))
        return np.concatenate(out)
