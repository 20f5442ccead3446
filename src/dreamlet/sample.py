"""Generate pictures from prompts: PNG files plus OUTDIR/index.jsonl (file, prompt, seed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from .checkpoint import UserError
from .pipeline import Pipeline


def read_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"prompts file is not UTF-8 text: {path}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"prompts file has no prompts (one per line): {path}")
    return prompts


def slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length] or "prompt"


def sample(model_dir: str | Path, prompts: list[str], out: str | Path, num: int = 1, seed: int = 0,
           steps: int | None = None, guidance: float | None = None, size: int | None = None,
           sampler: str | None = None) -> list[dict]:
    """Draw `num` pictures per prompt; picture k gets seed `seed + k`. Returns the index records."""
    if num < 1:
        raise UserError("--num must be at least 1")
    if steps is not None and steps < 1:
        raise UserError("--steps must be at least 1")
    pipeline = Pipeline.load(model_dir)
    if size is not None and size != pipeline.image_size:
        raise UserError(f"this model was trained at {pipeline.image_size} px, not {size} px")
    prompts = pipeline.check_prompts(prompts)
    jobs = [(p, seed + len(prompts) * k + i) for k in range(num) for i, p in enumerate(prompts)]
    jobs.sort(key=lambda job: job[1])
    images = pipeline([p for p, _ in jobs], [s for _, s in jobs], steps=steps, guidance=guidance, sampler=sampler)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for (prompt, image_seed), image in zip(jobs, images):
        name = f"{image_seed:06d}-{slug(prompt)}.png"
        Image.fromarray(image).save(out / name)
        records.append({"file": name, "prompt": prompt, "seed": image_seed})
    with open(out / "index.jsonl", "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records
