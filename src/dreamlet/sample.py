"""Generate pictures from prompts: PNG files plus OUTDIR/index.jsonl. Every picture carries what drew
it (model, prompt, seed, negative prompt, steps, guidance, sampler) in its index line and in a
"dreamlet" text chunk of its PNG, so `dreamlet sample --from-png FILE` draws it again."""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from . import __version__
from .checkpoint import UserError
from .models import families_that, get_family, listed
from .pipeline import Pipeline, PipelineOutput, seed_jobs


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
           sampler: str | None = None, rerank: int | None = None, clip: str | Path | None = None,
           method: str = "model", negative: str | None = None, init_image: str | Path | None = None,
           mask: str | Path | None = None, strength: float | None = None) -> list[dict]:
    """Draw `num` pictures per prompt (the same `Pipeline.run` as `dreamlet.load(...)(...)`): picture k of
    prompt i gets seed `seed + len(prompts) * k + i`. With `rerank` K > 1 (None: the model's default), each
    picture is the best of K candidates (seeds K * s ... K * s + K - 1), by the CLIP model `clip` as DALL-E
    does (its record gives the winning seed, which draws it alone), or by the model's own judgement (its
    record gives its seed s and `candidates`: s draws it again with the same K). `negative`: the
    negative prompt (classifier-free guidance moves away from it).
    `init_image` draws image-to-image from that picture (`strength` 0.8); with `mask` (light where to
    draw) it inpaints (strength 1).
    `method="vqgan-clip"` draws no sample from a prior: it optimises an image tokenizer's codes (a vqvae
    model, or a dalle model's own) against the CLIP for `steps` steps (default 100). Returns the index
    records."""
    if method not in ("model", "vqgan-clip"):
        raise UserError(f"unknown --method {method!r}; expected model or vqgan-clip")
    pipeline = Pipeline.load(model_dir)
    if method == "vqgan-clip":
        if negative:
            raise UserError("--method vqgan-clip has no use for a negative prompt")
        jobs, images, scores = optimise_with_clip(pipeline, prompts, num, seed, steps, clip)
        settings = {"model": str(model_dir), "family": pipeline.family, "method": method, "steps": steps or 100,
                    "clip": str(clip)}
        return save(out, PipelineOutput(images, [p for p, _ in jobs], [s for _, s in jobs], [""] * len(jobs), scores,
                                        settings))
    pipeline = pipeline.at_size(size)  # a cascade's base stage alone when --size asks for its size
    if init_image is None and (mask is not None or strength is not None):
        raise UserError("--mask and --strength edit a picture: give --init-image as well")
    edit = pipeline.edit(init_image, mask, strength) if init_image is not None else None
    drawn = pipeline.run(prompts, seed, num, steps, guidance, sampler, rerank, clip, negative=negative, edit=edit)
    drawn.settings |= {"model": str(model_dir), "size": pipeline.image_size} | ({"clip": str(clip)} if clip else {})
    if edit is not None:
        drawn.settings |= {"init_image": str(init_image)} | ({"mask": str(mask)} if mask is not None else {})
    return save(out, drawn)


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
    return jobs, images, scores


def save(out: str | Path, drawn: PipelineOutput) -> list[dict]:
    """PNG files and index.jsonl lines for drawn pictures, each with the settings that drew it (also in
    the PNG's "dreamlet" text chunk)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for image, prompt, image_seed, negative, score in zip(drawn.images, drawn.prompts, drawn.seeds,
                                                          drawn.negative_prompts, drawn.scores):
        name = f"{image_seed:06d}-{slug(prompt)}.png"
        settings = ({"prompt": prompt, "seed": image_seed, "negative_prompt": negative} | drawn.settings
                    | ({"clip_score": score} if score is not None else {}) | {"dreamlet": __version__})
        Image.fromarray(image).save(out / name, pnginfo=settings_chunk(settings))
        records.append({"file": name} | settings)
    with open(out / "index.jsonl", "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records


PNG_KEY = "dreamlet"  # the PNG text chunk that holds a picture's settings


def settings_chunk(settings: dict):
    """The PNG text chunk (PIL's `pnginfo=`) that carries the settings a picture was drawn with, as
    `sample`, `serve` and `--from-png` read them."""
    from PIL.PngImagePlugin import PngInfo
    chunk = PngInfo()
    chunk.add_text(PNG_KEY, json.dumps(settings))
    return chunk


def read_png_settings(path: str | Path) -> dict:
    """The settings a picture written by `sample` or `serve` was drawn with (its "dreamlet" text chunk)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--from-png: no such file: {path}")
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(PNG_KEY)
    except (OSError, ValueError, Image.DecompressionBombError):
        raise UserError(f"--from-png: {path} is not a picture Pillow can read") from None
    if text is None:
        raise UserError(f"--from-png: {path} carries no dreamlet settings (it was not drawn by dreamlet sample "
                        "or serve)")
    try:
        settings = json.loads(text)
        assert isinstance(settings, dict) and isinstance(settings["prompt"], str) and isinstance(settings["seed"], int)
    except (ValueError, KeyError, AssertionError):
        raise UserError(f"--from-png: the dreamlet settings in {path} are damaged") from None
    return settings


def sample_again(path: str | Path, out: str | Path, model_dir: str | Path | None = None) -> list[dict]:
    """Draw the picture in a PNG written by dreamlet again, from the settings it carries: with its own
    model, or `model_dir` (the same picture when that is the same model)."""
    settings = read_png_settings(path)
    if model_dir is None:
        model_dir = settings.get("model")
        if not model_dir or not Path(model_dir).is_dir():  # `serve` names its models without their paths
            raise UserError(f"--from-png: {path} was drawn by model {model_dir!r}, which is not a folder here; "
                            "give --model DIR")
    beside = {}  # `serve` names the pictures a drawing started from relative to the folder of its pictures
    for key in ("init_image", "mask"):
        named = settings.get(key)
        if named and not Path(named).is_absolute() and (Path(path).parent / named).is_file():
            beside[key] = str(Path(path).parent / named)
    settings |= beside
    return sample(model_dir, [settings["prompt"]], out, seed=settings["seed"], steps=settings.get("steps"),
                  guidance=settings.get("guidance"), size=settings.get("size"), sampler=settings.get("sampler"),
                  rerank=settings.get("candidates", 1) if settings.get("chosen_by") == "model" else 1,
                  clip=settings.get("clip"), method=settings.get("method", "model"),
                  negative=settings.get("negative_prompt") or None, init_image=settings.get("init_image"),
                  mask=settings.get("mask"), strength=settings.get("strength"))
