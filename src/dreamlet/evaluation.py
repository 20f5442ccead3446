"""Evaluation: the exact shapes judge, and learned metrics with the project's CLIP for any data
(CLIP score, R-precision, FID and KID on held-out captions)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import UserError
from .data import shapes
from .data.shapes import benchmark_jobs, benchmark_prompts
from .images import to_tensor, to_uint8
from .judge import judge, summarize
from .models.diffusion.denoiser import DETAIL_TIME, detail_scale
from .pipeline import Pipeline


def evaluate_shapes(model_dir: str | Path | Pipeline, prompts: int = 64, seeds: int = 2, steps: int | None = None,
                    guidance: float | None = None, sampler: str | None = None, size: int | None = None,
                    pipeline: Pipeline | None = None, rerank: int | None = None, clip=None,
                    prompt_set: str = "evaluation") -> dict:
    """The shapes judge's report for a model (a directory or a loaded Pipeline): `prompts` canonical
    prompts of each kind (seen single, held-out single, pair) of the `prompt_set` (evaluation: the
    figures reported; validation: the one designs are chosen on), `seeds` pictures each, drawn as the
    model draws by default; with `rerank` K, each picture is the best of K, by the CLIP model `clip` (a
    directory or ClipScorer) or by the model's own judgement."""
    if isinstance(model_dir, Pipeline):
        model_dir, pipeline = model_dir.path or "(in memory)", model_dir
    if prompts < 1 or seeds < 1:
        raise UserError("--prompts and --seeds must be at least 1")
    pipeline = pipeline or Pipeline.load(model_dir)
    pipeline = pipeline.at_size(size)  # a cascade's base stage alone when --size asks for its size
    if pipeline.meta.get("data") != "shapes":
        raise UserError(f"the shapes judge needs a model trained on shapes, not {pipeline.meta.get('data')}; "
                        f"score it with a CLIP instead: --clip CLIPMODEL")
    jobs = benchmark_jobs(prompts, seeds, prompt_set)
    started = time.perf_counter()
    rerank = pipeline.default_rerank(rerank)
    images = pipeline.pictures([p.text for p, _ in jobs], [seed for _, seed in jobs], steps, guidance, sampler, rerank,
                               clip)
    seconds = time.perf_counter() - started
    results = [(p, judge(image, p)) for (p, _), image in zip(jobs, images)]
    report = summarize(results)
    report |= {
        "model": str(model_dir), "benchmark": "shapes", "size": pipeline.image_size,
        "prompts_per_kind": prompts, "seeds": seeds, "prompt_set": prompt_set,
        **drawing_settings(pipeline, steps, guidance, sampler), "rerank": rerank,
        "seconds_per_image": seconds / len(jobs),
        "failures": [{"prompt": p.text, "seed": seed, "found": r["found"]}
                     for (p, seed), (_, r) in zip(jobs, results) if not r["correct"]][:40],
    }
    return report


def drawing_settings(pipeline, steps, guidance, sampler) -> dict:
    """Steps, guidance (and how it changes with noise, where it does) and sampler as the pictures were drawn;
    None where the family has no such setting (a GAN draws in one pass)."""
    return {k: v for k, v in pipeline.settings(steps, guidance, sampler).items() if k not in ("model", "family")}


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """Write the report as JSON (OUT with .json) and markdown (.md)."""
    out = Path(out)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    if report.get("benchmark") == "reconstruction":
        md_path.write_text(reconstruction_markdown(report))
    else:
        clip = report.get("kind") == "clip" or "clip" in report
        md_path.write_text(clip_markdown(report) if clip else markdown(report))
    return json_path, md_path


def drawing(report: dict) -> str:
    """How a report's pictures were drawn, for its markdown: the sampler's steps and guidance."""
    if report["steps"] is None:
        return "one forward pass"
    sampler = f" {report['sampler']}" if report.get("sampler") else ""  # an older CLIP report does not say
    guidance, detail = report["guidance"], report.get("guidance_detail")
    if detail is not None and detail != 1 and guidance is not None:   # diffusion guides less once the layout is set
        below = f"{detail_scale(guidance, detail):g} below t = {DETAIL_TIME}"
        return f"{report['steps']}{sampler} steps, guidance {guidance} ({below})"
    return f"{report['steps']}{sampler} steps, guidance {guidance}"


def markdown(report: dict) -> str:
    pct = lambda v: f"{100 * v:.1f} %" if v is not None else "-"  # noqa: E731
    counts = report["counts"]
    lines = [f"# Shapes benchmark: {report['model']}", "",
             f"{report['size']} px, {drawing(report)}, {report['seeds']} seed(s) per prompt of the "
             f"{report.get('prompt_set', 'evaluation')} set, {report['seconds_per_image']:.3f} s per picture.", "",
             "| prompts | pictures | correct |", "|---|---|---|"]
    for kind, label in (("seen", "seen single"), ("heldout", "held-out single"), ("pair", "pair")):
        lines.append(f"| {label} | {counts.get(kind, 0)} | {pct(report.get(kind))} |")
    lines += ["", "| attribute | correct |", "|---|---|"]
    lines += [f"| {name} | {pct(value)} |" for name, value in report["attributes"].items()]
    if report.get("failures"):
        lines += ["", "First failures (prompt -> what the judge found):", ""]
        lines += [f"- `{f['prompt']}` (seed {f['seed']}) -> {', '.join(f['found']) or 'nothing'}"
                  for f in report["failures"][:12]]
    return "\n".join(lines) + "\n"


def data_options(pipeline: Pipeline) -> dict:
    """How the data a model was trained on was read, for `data.load`: its --format (None: detected), --fit
    (crop before it was a choice) and --caption-column."""
    train = pipeline.meta.get("train", {})
    return dict(format=train.get("format") or None, fit=train.get("fit") or "crop",
                caption_column=train.get("caption_column") or "")


def heldout_set(data: str, size: int, count: int, format: str | None = None, fit: str = "crop",
                caption_column: str = "") -> tuple[np.ndarray, list[str], list[str]]:
    """Real held-out pictures (read as the model was trained: `data_options`), their captions, and a
    pool of captions to draw distractors from. Shapes: canonical benchmark prompts of every kind and
    freshly drawn pictures of them; a third are single objects of the held-out colour-shape pairings
    (never in a training picture alone), a third seen singles, a third pairs."""
    from .data import load
    from .data.shapes import HELD_OUT, Scene, canonical_caption, random_pair, random_single, render
    if data == "shapes":
        rng, held_out = np.random.default_rng(4321), tuple(sorted(HELD_OUT))
        scenes: list[Scene] = [random_pair(rng) if i % 3 == 2 else random_single(rng, held_out) if i % 3 == 1
                               else random_single(rng) for i in range(count)]
        pool = [p.text for p in benchmark_prompts(432, 48, 400, seed=99)]
        return np.stack([render(s, size) for s in scenes]), [canonical_caption(s) for s in scenes], pool
    dataset = load(data, size, format=format, quiet=True, fit=fit, caption_column=caption_column)
    if not len(dataset.heldout_index):
        raise UserError(f"{data} holds nothing out (fewer than 100 pictures): nothing to evaluate on")
    images, captions = dataset.heldout(count)
    pool = sorted({c for r in dataset.heldout_index for c in dataset.all_captions[r]} | set(dataset.captions(5000)))
    return images, captions, pool


def evaluate_clip_model(clip_dir: str | Path, data: str | None = None, count: int = 256, distractors: int = 32,
                        format: str | None = None) -> dict:
    """How good the CLIP itself is, on real held-out pictures: R-precision, CLIP score, and FID
    between two halves of the real set against FID between real pictures and noise."""
    from .scoring import ClipScorer, fid_kid
    scorer = ClipScorer(clip_dir)
    data = data or scorer.pipeline.meta.get("data", "shapes")
    images, captions, pool = heldout_set(data, scorer.image_size, count, **data_options(scorer.pipeline) | (
        {"format": format} if format else {}))
    half = len(images) // 2
    noise = np.random.default_rng(0).integers(0, 256, images[:half].shape, dtype=np.uint8)
    return {"model": str(clip_dir), "kind": "clip", "data": data, "pictures": len(images), "distractors": distractors,
            "r_precision_real": scorer.r_precision(images, captions, pool, distractors),
            "clip_score_real": scorer.clip_score(images, captions),
            "fid_real_halves": fid_kid(scorer, images[:half], images[half:2 * half])["fid"],
            "fid_real_noise": fid_kid(scorer, images[:half], noise)["fid"]}


def evaluate_with_clip(model_dir: str | Path, clip_dir: str | Path, data: str | None = None, count: int = 128,
                       distractors: int = 32, steps: int | None = None, guidance: float | None = None,
                       sampler: str | None = None, pipeline: Pipeline | None = None,
                       inception: str | None = None, rerank: int | None = None) -> dict:
    """Generate a picture for each held-out caption and score it with the CLIP: CLIP score,
    R-precision, FID and KID against the real held-out pictures (and FID in Inception space with
    local `inception` weights). The pictures are drawn as the model draws by default (`rerank`: its own
    best of K, None: the model's default). On shapes the exact judge runs too."""
    from .scoring import ClipScorer, fid_kid, inception_fid_metric, metric_value
    inception_metric = inception_fid_metric(inception) if inception else None  # fail early
    pipeline = pipeline or Pipeline.load(model_dir)
    scorer = ClipScorer(clip_dir)
    if scorer.image_size != pipeline.image_size:
        raise UserError(f"the CLIP model works at {scorer.image_size} px and the generator at {pipeline.image_size} px")
    data = data or pipeline.meta.get("data", "shapes")
    real, captions, pool = heldout_set(data, pipeline.image_size, count, **data_options(pipeline))
    started = time.perf_counter()
    rerank = pipeline.default_rerank(rerank)
    fake = pipeline.pictures(captions, list(range(len(captions))), steps, guidance, sampler, rerank)
    seconds = time.perf_counter() - started
    report = {"model": str(model_dir), "clip": str(clip_dir), "data": data, "pictures": len(fake),
              "distractors": distractors, **drawing_settings(pipeline, steps, guidance, sampler), "rerank": rerank,
              "seconds_per_image": seconds / len(fake),
              "clip_score": scorer.clip_score(fake, captions), "clip_score_real": scorer.clip_score(real, captions),
              "r_precision": scorer.r_precision(fake, captions, pool, distractors),
              "r_precision_real": scorer.r_precision(real, captions, pool, distractors)}
    report |= fid_kid(scorer, real, fake)
    if inception_metric is not None:
        report["fid_inception"] = metric_value(inception_metric, real, fake)
    if data == "shapes":
        report["judge"] = evaluate_shapes(model_dir, prompts=min(64, count), seeds=1, steps=steps, guidance=guidance,
                                          sampler=sampler, pipeline=pipeline, rerank=rerank)
    return report


def clip_markdown(report: dict) -> str:
    lines = [f"# CLIP evaluation: {report['model']}", ""]
    if report.get("kind") == "clip":
        lines += [f"Data: {report['data']}, {report['pictures']} real held-out pictures, "
                  f"{report['distractors']} distractors.", "",
                  "| metric | value |", "|---|---|",
                  f"| R-precision on real pictures | {report['r_precision_real']:.3f} |",
                  f"| CLIP score on real pictures | {report['clip_score_real']:.1f} |",
                  f"| FID, real half vs real half | {report['fid_real_halves']:.1f} |",
                  f"| FID, real vs noise | {report['fid_real_noise']:.1f} |"]
        return "\n".join(lines) + "\n"
    lines += [f"CLIP: {report['clip']}. Data: {report['data']}, {report['pictures']} held-out captions, "
              f"one picture each, {drawing(report)}, {report['distractors']} distractors.", "",
              "| metric | generated | real |", "|---|---|---|",
              f"| CLIP score | {report['clip_score']:.1f} | {report['clip_score_real']:.1f} |",
              f"| R-precision | {report['r_precision']:.3f} | {report['r_precision_real']:.3f} |",
              f"| FID (CLIP features) | {report['fid']:.1f} | - |",
              f"| KID (CLIP features) | {report['kid']:.3f} +/- {report['kid_std']:.3f} | - |"]
    if "fid_inception" in report:
        lines.append(f"| FID (Inception-v3) | {report['fid_inception']:.1f} | - |")
    if "judge" in report:
        j = report["judge"]
        lines += ["", f"Exact judge: seen single {100 * j['seen']:.1f} %, held-out single {100 * j['heldout']:.1f} %, "
                      f"pair {100 * j['pair']:.1f} %."]
    return "\n".join(lines) + "\n"


def reconstruct(model, images: np.ndarray, device, batch_size: int = 64) -> tuple[torch.Tensor, np.ndarray, float]:
    """Pictures (N, S, S, 3) uint8 through an autoencoder's `encode` and `decode`: the encodings, the
    decoded pictures (uint8, as saved to PNG) and the seconds it took."""
    started = time.perf_counter()
    encoded, decoded = [], []
    for i in range(0, len(images), batch_size):
        encoded.append(model.encode(to_tensor(images[i:i + batch_size]).to(device)))
        decoded.append(to_uint8(model.decode(encoded[-1])))
    return torch.cat(encoded).cpu(), np.concatenate(decoded), time.perf_counter() - started


def judged_reconstructions(model, size: int, device, count: int = 256, seed: int = 7) -> dict:
    """The exact judge on `count` new shapes scenes of each kind (single, pair) after an autoencoder's encode
    and decode: the most a prior over its codes or latents can reach on that kind. (A tokenizer trained
    1,200 steps kept 82 % of singles and 45 % of pairs at 31 dB; 6,000 steps keep 100 and 98 %, docs/dalle.md.)"""
    rng = np.random.default_rng(seed)
    passed = {}
    for kind, draw in (("single", shapes.random_single), ("pair", shapes.random_pair)):
        scenes = [draw(rng) for _ in range(count)]
        _, decoded, _ = reconstruct(model, np.stack([shapes.render(scene, size) for scene in scenes]), device)
        prompts = [shapes.parse_prompt(shapes.canonical_caption(scene)) for scene in scenes]
        passed[kind] = float(np.mean([judge(image, prompt)["correct"] for image, prompt in zip(decoded, prompts)]))
    return passed


def judged_summary(report: dict) -> str:
    """The judged reconstructions for `dreamlet eval`'s one-line summary ("" when the data is not shapes)."""
    if "judged" not in report:
        return ""
    j = report["judged"]
    return (f"; after reconstruction the exact judge passes {100 * j['single']:.0f} % of new single scenes "
            f"and {100 * j['pair']:.0f} % of pairs")


def psnr_uint8(decoded: np.ndarray, images: np.ndarray) -> float:
    """PSNR on [0, 1] pixels over a whole set: 10 log10(1 / MSE)."""
    mse = np.mean((decoded.astype(np.float64) - images) ** 2) / 255 ** 2
    return float(10 * np.log10(1 / max(mse, 1e-12)))


def evaluate_tokenizer(model_dir: str | Path, data: str | None = None, count: int = 192,
                       pipeline: Pipeline | None = None) -> dict:
    """An image tokenizer on real held-out pictures of the data it was trained on: reconstruction PSNR
    (on [0, 1] pixels, as saved to PNG, over the whole set), the fraction of the codebook in use, and
    the perplexity of code use (exp of the entropy of the codes' histogram)."""
    pipeline = pipeline or Pipeline.load(model_dir)
    model = pipeline.model
    data = data or pipeline.meta.get("data", "shapes")
    images, _, _ = heldout_set(data, pipeline.image_size, count, **data_options(pipeline))
    codes, decoded, seconds = reconstruct(model, images, pipeline.device)
    share = torch.bincount(codes.flatten(), minlength=model.config.codebook_size).double() / codes.numel()
    used = share[share > 0]
    report = {"model": str(model_dir), "benchmark": "reconstruction", "kind": model.config.kind, "data": data,
              "size": pipeline.image_size, "pictures": len(images), "grid": model.grid,
              "codebook_size": model.config.codebook_size, "psnr": psnr_uint8(decoded, images),
              "usage": len(used) / len(share), "codes_used": len(used),
              "perplexity": (-(used * used.log()).sum()).exp().item(), "seconds_per_image": seconds / len(images)}
    if data == "shapes":
        report["judged"] = judged_reconstructions(model, pipeline.image_size, pipeline.device)
    return report


def evaluate_reconstruction(model_dir: str | Path, data: str | None = None, count: int = 192,
                            pipeline: Pipeline | None = None, clip: str | None = None) -> dict:
    """An autoencoder with continuous latents on real held-out pictures of its data: reconstruction PSNR
    and, with a CLIP model, the FID of the reconstructions against the originals in its feature space."""
    pipeline = pipeline or Pipeline.load(model_dir)
    data = data or pipeline.meta.get("data", "shapes")
    images, _, _ = heldout_set(data, pipeline.image_size, count, **data_options(pipeline))
    latents, decoded, seconds = reconstruct(pipeline.model, images, pipeline.device)
    report = {"model": str(model_dir), "benchmark": "reconstruction", "kind": "autoencoder", "data": data,
              "size": pipeline.image_size, "pictures": len(images), "grid": latents.shape[-1],
              "latent_channels": latents.shape[1], "psnr": psnr_uint8(decoded, images),
              "seconds_per_image": seconds / len(images)}
    if data == "shapes":
        report["judged"] = judged_reconstructions(pipeline.model, pipeline.image_size, pipeline.device)
    if clip:
        from .scoring import ClipScorer, fid_kid
        report |= {"clip": str(clip), "fid": fid_kid(ClipScorer(clip), images, decoded)["fid"]}
    return report


def reconstruction_markdown(report: dict) -> str:
    if report["kind"] == "autoencoder":
        what = f"{report['grid']} x {report['grid']} x {report['latent_channels']} latents"
        rows = [f"| reconstruction FID (CLIP features) | {report['fid']:.1f} |"] if "fid" in report else []
    else:
        what = f"{report['grid']} x {report['grid']} codes from {report['codebook_size']}"
        rows = [f"| codebook usage | {100 * report['usage']:.1f} % ({report['codes_used']} codes) |",
                f"| perplexity of code use | {report['perplexity']:.1f} |"]
    if "judged" in report:  # the most a second stage can reach on the shapes judge
        rows += [f"| new {kind} scenes the exact judge passes after reconstruction | {100 * share:.1f} % |"
                 for kind, share in report["judged"].items()]
    return "\n".join([
        f"# Autoencoder: {report['model']}", "",
        f"{report['kind']} on {report['data']} at {report['size']} px: {what}, {report['pictures']} held-out "
        f"pictures, {report['seconds_per_image'] * 1000:.1f} ms per picture to encode and decode.", "",
        "| metric | value |", "|---|---|", f"| reconstruction PSNR | {report['psnr']:.2f} dB |", *rows]) + "\n"

