"""Generate pictures from prompts: PNG files plus OUTDIR/index.jsonl (file, prompt, seed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from .checkpoint import UserError
from .models import families_that, get_family, listed
from .pipeline import Pipeline, seed_jobs


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
           sampler: str | None = None, rerank: int = 1, clip: str | Path | None = None,
           method: str = "model") -> list[dict]:
    """Draw `num` pictures per prompt (the same `Pipeline.run` as `dreamlet.load(...)(...)`): picture k of
    prompt i gets seed `seed + len(prompts) * k + i`. With `rerank` K > 1, each picture is the best of K
    candidates (seeds K * s ... K * s + K - 1) by the CLIP model `clip`, as DALL-E does; its record gives
    the winning seed. `method="vqgan-clip"` draws no sample from a
    prior: it optimises an image tokenizer's codes (a vqvae model, or a dalle model's own) against
    the CLIP for `steps` steps (default 100). Returns the index records."""
    if method not in ("model", "vqgan-clip"):
        raise UserError(f"unknown --method {method!r}; expected model or vqgan-clip")
    pipeline = Pipeline.load(model_dir)
    if method == "vqgan-clip":
        return save(out, *optimise_with_clip(pipeline, prompts, num, seed, steps, clip))
    pipeline = pipeline.at_size(size)  # a cascade's base stage alone when --size asks for its size
    drawn = pipeline.run(prompts, seed, num, steps, guidance, sampler, rerank, clip)
    return save(out, drawn.jobs, drawn.images, drawn.scores, rerank)


def optimise_with_clip(pipeline: Pipeline, prompts: list[str], num: int, seed: int, steps: int | None, clip):
    from .scoring import ClipScorer
    from .vqgan_clip import optimise_codes
    family = get_family(pipeline.family)
    if family.image_tokenizer is None:
        with_codes = families_that(lambda other: other.image_tokenizer is not None)
        raise UserError(f"--method vqgan-clip optimises an image tokenizer's codes: give a {listed(with_codes)} "
                        f"model, not {pipeline.family}")
    if not clip:
        raise UserError("--method vqgan-clip needs a CLIP model to optimise against: --clip CLIPMODEL")
    tokenizer = family.image_tokenizer(pipeline.model)
    scorer = ClipScorer(clip)
    if scorer.image_size != tokenizer.config.image_size:
        raise UserError(f"the CLIP works at {scorer.image_size} px, the image tokenizer at "
                        f"{tokenizer.config.image_size} px")
    jobs = seed_jobs(pipeline.check_prompts(prompts), seed, num, steps)
    ids = scorer.tokenizer([p for p, _ in jobs]).to(scorer.device)
    images = optimise_codes(tokenizer.to(scorer.device), scorer.model, ids, [s for _, s in jobs], steps or 100)
    scores = [round(100 * float(v), 2) for v in scorer.cosine(images, [p for p, _ in jobs])]
    return jobs, images, scores, 1


def save(out: str | Path, jobs: list[tuple[str, int]], images, scores: list, rerank: int) -> list[dict]:
    """PNG files and index.jsonl lines for (prompt, seed) jobs and their pictures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for (prompt, image_seed), image, score in zip(jobs, images, scores):
        name = f"{image_seed:06d}-{slug(prompt)}.png"
        Image.fromarray(image).save(out / name)
        records.append({"file": name, "prompt": prompt, "seed": image_seed}
                       | ({"candidates": rerank} if rerank > 1 else {})
                       | ({"clip_score": score} if score is not None else {}))
    with open(out / "index.jsonl", "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records
