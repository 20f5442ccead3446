"""A trained model ready to draw: weights + config + tokenizer, loaded from a model directory."""
from __future__ import annotations

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


class Pipeline:
    def __init__(self, family: str, model, tokenizer: CaptionTokenizer, meta: dict, precision: str = "auto"):
        self.family, self.model, self.tokenizer, self.meta = family, model, tokenizer, meta
        self.precision = precision

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
        return cls(meta["family"], model.to(pick_device(device)).eval(), tokenizer, meta)

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

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, batch_size: int = 64) -> np.ndarray:
        """One picture per (prompt, seed): (N, S, S, 3) uint8. A seed fixes its picture's starting noise."""
        if not getattr(self.model, "generates", True):
            raise UserError(f"a {self.family} model scores pictures against captions; it does not draw them")
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
