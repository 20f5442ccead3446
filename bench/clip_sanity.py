"""Is the project's CLIP a trustworthy judge on shapes? Trains one, then checks it three ways and
writes the figures to docs/benchmarks.md:

1. R-precision on real held-out pictures (each picture's caption against 32 distractors);
2. FID in its feature space: two halves of the real set, against real vs noise and real vs the
   pictures of generators trained for 2, 5 and 10 minutes;
3. agreement with the exact judge across those generators: per checkpoint (Pearson correlation
   of accuracy and CLIP R-precision) and per picture.

    .venv/bin/python bench/clip_sanity.py [--minutes 5] [--generators runs/bench/2min/model ...]

The generators default to the ones bench/time_to_accuracy.py leaves in runs/bench.
"""
from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dreamlet.data.shapes import benchmark_prompts  # noqa: E402
from dreamlet.evaluation import evaluate_clip_model, heldout_set  # noqa: E402
from dreamlet.judge import judge  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402
from dreamlet.scoring import ClipScorer, fid_kid  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402
from docs_section import command_line, keep_results, write_section  # noqa: E402
from time_to_accuracy import machine  # noqa: E402


def generator_name(model: Path) -> str:
    """A generator's name in the table: its run's folder (RUN/model), or a snapshot's own (RUN/snapshots/5min)."""
    return model.parent.name if model.name == "model" else model.name


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0, help="CLIP training budget")
    parser.add_argument("--generators", nargs="*", default=[str(ROOT / "runs" / "bench" / f"{m}min" / "model") for m in (2, 5, 10)])
    parser.add_argument("--prompts", type=int, default=64, help="benchmark prompts of each kind per generator")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "clip"))
    parser.add_argument("--rerank", type=int, default=8, help="candidates per prompt for the reranking check")
    parser.add_argument("--rerank-model", help="generator for the reranking check (default: runs/demo/model, else the last generator)")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    generators = [Path(g) for g in args.generators if Path(g).is_dir()]
    if not generators:
        sys.exit("no generators: run bench/time_to_accuracy.py first, or pass --generators")

    out = Path(args.out)
    if (out / "checkpoint").exists():
        import shutil
        shutil.rmtree(out)
    clip_dir = train(TrainConfig(model="clip", out=str(out), minutes=args.minutes, batch_size=64, sample_every=0), quiet=True)
    steps = int(open(out / "train_log.csv").read().strip().splitlines()[-1].split(",")[0])
    scorer = ClipScorer(clip_dir)
    real_report = evaluate_clip_model(clip_dir, count=512, distractors=32)
    real, real_captions, pool = heldout_set("shapes", 32, 512)
    pool = sorted(set(pool) | {p.text for p in benchmark_prompts(1000, 1000, 1000, seed=7)})
    noise = np.random.default_rng(0).integers(0, 256, real[:256].shape, dtype=np.uint8)
    fid_noise = fid_kid(scorer, real[:256], noise)["fid"]

    rows, per_picture = [], []
    for g in generators:
        pipeline = Pipeline.load(g)
        prompts = benchmark_prompts(args.prompts, args.prompts, args.prompts, seed=1234)
        images = pipeline.draw([p.text for p in prompts], list(range(len(prompts))))
        correct = np.asarray([judge(im, p)["correct"] for im, p in zip(images, prompts)])
        ranked = scorer.caption_ranked_first(images, [p.text for p in prompts], pool, 32)
        per_picture += list(zip(correct, ranked))
        rows.append(dict(model=generator_name(g), accuracy=correct.mean(), r_precision=ranked.mean(),
                         clip_score=scorer.clip_score(images, [p.text for p in prompts]),
                         fid=fid_kid(scorer, real[:256], images[:256])["fid"],
                         pair_accuracy=correct[[p.kind == "pair" for p in prompts]].mean(),
                         pair_r=ranked[[p.kind == "pair" for p in prompts]].mean()))
        print(rows[-1], flush=True)
    # Reranking: the best of K candidates by CLIP score, judged exactly, against the first candidate alone.
    demo = Path(args.rerank_model) if args.rerank_model else ROOT / "runs" / "demo" / "model"
    demo = demo if demo.is_dir() else generators[-1]
    pipeline = Pipeline.load(demo)
    prompts = benchmark_prompts(args.prompts, args.prompts, args.prompts, seed=1234)
    K = args.rerank
    candidates = pipeline.draw([p.text for p in prompts for _ in range(K)], [K * i + c for i in range(len(prompts)) for c in range(K)])
    text_vectors = scorer.embed_text([p.text for p in prompts])
    image_vectors = scorer.embed_images(candidates).view(len(prompts), K, -1)
    best = (image_vectors @ text_vectors[:, :, None]).squeeze(-1).argmax(1).numpy()
    before = {k: [] for k in ("seen", "heldout", "pair")}
    after = {k: [] for k in ("seen", "heldout", "pair")}
    for i, p in enumerate(prompts):
        before[p.kind].append(judge(candidates[K * i], p)["correct"])
        after[p.kind].append(judge(candidates[K * i + best[i]], p)["correct"])
    rerank = {k: (np.mean(before[k]), np.mean(after[k])) for k in before}
    print("rerank", rerank, flush=True)

    accuracy, r_prec = np.asarray([r["accuracy"] for r in rows]), np.asarray([r["r_precision"] for r in rows])
    pearson = float(np.corrcoef(accuracy, r_prec)[0, 1]) if len(rows) > 2 else float("nan")
    judged, clipped = (np.asarray(v, float) for v in zip(*per_picture))
    agreement = float((judged == clipped).mean())
    phi = float(np.corrcoef(judged, clipped)[0, 1])

    command = command_line("clip_sanity.py", sys.argv[1:])
    lines = [f"Measured {date.today()} on {machine()}.",
             f"Command: `{command}` (CLIP: {args.minutes:g} minutes, {steps} steps of 64, default `small` preset). "
             "Raw results: bench/results/clip_sanity.json.", "",
             "| check | value |", "|---|---|",
             f"| R-precision on {real_report['pictures']} real held-out pictures, 32 distractors | **{real_report['r_precision_real']:.3f}** |",
             f"| CLIP score on real pictures | {real_report['clip_score_real']:.1f} |",
             f"| FID, real half vs real half ({real_report['pictures'] // 2} each) | {real_report['fid_real_halves']:.1f} |",
             f"| FID, 256 real vs 256 noise pictures | {fid_noise:.1f} |", "",
             "| generator | exact judge: accuracy (all prompts) | pair | CLIP R-precision | pair | CLIP score | FID vs 256 real |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {100 * r['accuracy']:.1f} % | {100 * r['pair_accuracy']:.1f} % | "
                     f"{r['r_precision']:.3f} | {r['pair_r']:.3f} | {r['clip_score']:.1f} | {r['fid']:.1f} |")
    lines += ["", f"Across the {len(rows)} generators, the Pearson correlation between the exact judge's accuracy and "
                  f"CLIP R-precision is **{pearson:.2f}**. Per picture ({len(per_picture)} pictures), the CLIP "
                  f"(own caption first among 33) and the judge agree on {100 * agreement:.1f} % (phi {phi:.2f})."]
    lines += ["", f"Reranking ({generator_name(demo)}, {args.prompts} prompts of each kind, one picture each): the best of "
                  f"{K} candidates by CLIP score against the first candidate alone, judged exactly.", "",
              "| prompts | without reranking | best of " + str(K) + " |", "|---|---|---|"]
    for kind, label in (("seen", "seen single"), ("heldout", "held-out single"), ("pair", "pair")):
        lines.append(f"| {label} | {100 * rerank[kind][0]:.1f} % | **{100 * rerank[kind][1]:.1f} %** |")
    table = "\n".join(lines)
    print(table)
    if not args.no_docs:
        keep_results("clip_sanity", command, rows, clip_steps=steps, real=real_report, fid_noise=fid_noise,
                     pearson=pearson, agreement=agreement, phi=phi, rerank_model=str(demo), rerank=rerank)
        write_section("clip_sanity", "The project's CLIP as a judge (shapes)", table)


if __name__ == "__main__":
    main()
