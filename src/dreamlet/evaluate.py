"""Judge a model on the shapes benchmark: sample canonical prompts, score each picture exactly."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .checkpoint import UserError
from .data.shapes import benchmark_prompts
from .judge import judge, summarize
from .pipeline import Pipeline


def evaluate_shapes(model_dir: str | Path, prompts: int = 64, seeds: int = 2, steps: int | None = None,
                    guidance: float | None = None, sampler: str | None = None, size: int | None = None,
                    pipeline: Pipeline | None = None) -> dict:
    """`prompts` canonical prompts of each kind (seen single, held-out single, pair), `seeds` pictures each."""
    if prompts < 1 or seeds < 1:
        raise UserError("--prompts and --seeds must be at least 1")
    pipeline = pipeline or Pipeline.load(model_dir)
    if size is not None and size != pipeline.image_size:
        raise UserError(f"this model was trained at {pipeline.image_size} px, not {size} px")
    if pipeline.meta.get("data") != "shapes":
        raise UserError(f"the shapes benchmark needs a model trained on shapes, not {pipeline.meta.get('data')}")
    chosen = benchmark_prompts(prompts, prompts, prompts, seed=1234)
    jobs = [(p, 10_000 * s + i) for s in range(seeds) for i, p in enumerate(chosen)]
    started = time.perf_counter()
    images = pipeline([p.text for p, _ in jobs], [seed for _, seed in jobs], steps=steps, guidance=guidance,
                      sampler=sampler)
    seconds = time.perf_counter() - started
    results = [(p, judge(image, p)) for (p, _), image in zip(jobs, images)]
    report = summarize(results)
    config = pipeline.model.config
    report |= {
        "model": str(model_dir), "benchmark": "shapes", "size": pipeline.image_size,
        "prompts_per_kind": prompts, "seeds": seeds,
        "steps": steps or config.steps, "guidance": config.guidance if guidance is None else guidance,
        "sampler": sampler or config.sampler,
        "seconds_per_image": seconds / len(jobs),
        "failures": [{"prompt": p.text, "seed": seed, "found": r["found"]}
                     for (p, seed), (_, r) in zip(jobs, results) if not r["correct"]][:40],
    }
    return report


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """Write the report as JSON (OUT with .json) and markdown (.md)."""
    out = Path(out)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def markdown(report: dict) -> str:
    pct = lambda v: f"{100 * v:.1f} %" if v is not None else "-"  # noqa: E731
    counts = report["counts"]
    lines = [f"# Shapes benchmark: {report['model']}", "",
             f"{report['size']} px, {report['steps']} {report['sampler']} steps, guidance {report['guidance']}, "
             f"{report['seeds']} seed(s) per prompt, {report['seconds_per_image']:.3f} s per picture.", "",
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

