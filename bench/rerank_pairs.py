"""Can a CLIP that reads relations pick the right picture among a generator's candidates?

Two phases, so several CLIP variants can be compared on the same candidates:

    # K candidates for 64 prompts of each kind, judged exactly; cached in OUT/candidates.npz
    .venv/bin/python bench/rerank_pairs.py draw --generator runs/bench/curves/diffusion/snapshots/10min/model
    # train a CLIP (minutes, settings, data options), then score the cached candidates with it
    .venv/bin/python bench/rerank_pairs.py clip --name contrast --minutes 3 --contrast --set '{"text": {"position_std": 1.0}}'

Prints one JSON line per CLIP: accuracy per prompt kind for the first candidate, the CLIP's choice
and the oracle (any candidate right: what a perfect reranker would reach).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def draw(args):
    from dreamlet.data.shapes import benchmark_prompts
    from dreamlet.judge import judge
    from dreamlet.pipeline import Pipeline
    pipeline = Pipeline.load(args.generator)
    prompts = benchmark_prompts(args.prompts, args.prompts, args.prompts, seed=1234)
    jobs = [p for p in prompts for _ in range(args.candidates)]  # each prompt's candidates side by side
    started = time.perf_counter()
    images = pipeline.draw([p.text for p in jobs], list(range(len(jobs))), steps=args.steps)
    correct = np.asarray([judge(im, p)["correct"] for im, p in zip(images, jobs)]).reshape(len(prompts), -1)
    kinds = np.asarray([p.kind for p in prompts])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "candidates.npz", images=images, correct=correct,
                        texts=np.asarray([p.text for p in prompts]), kinds=kinds)
    print(json.dumps(dict(generator=args.generator, seconds=round(time.perf_counter() - started, 1),
                          **summary(correct, kinds))))


def summary(correct: np.ndarray, kinds: np.ndarray, chosen: np.ndarray | None = None) -> dict:
    out = {}
    for kind in ("seen", "heldout", "pair"):
        rows = correct[kinds == kind]
        out[kind] = dict(first=round(100 * rows[:, 0].mean(), 1), oracle=round(100 * rows.any(1).mean(), 1))
        if chosen is not None:
            out[kind]["reranked"] = round(100 * rows[np.arange(len(rows)), chosen[kinds == kind]].mean(), 1)
    return out


def use_minimal_pairs() -> None:
    """From now on, every shapes set in this process gives its pair scenes as minimal pairs on consecutive
    items: the same two objects with their places swapped and the relation inverted, worded the same way.
    (A CLIP trained so learned relations, not binding: docs/benchmarks.md, sixth round.)"""
    from dataclasses import replace
    from dreamlet.data import shapes

    def scene(self, index):
        rng = np.random.default_rng([self.seed, index - index % 2])
        if rng.random() >= self.pair_fraction:
            rng = np.random.default_rng([self.seed, index])
            return shapes.random_single(rng), rng
        scene = shapes.random_pair(rng)
        if index % 2:
            a, b = scene.objects
            scene = shapes.Scene((replace(a, position=b.position, cx=b.cx, cy=b.cy),
                                  replace(b, position=a.position, cx=a.cx, cy=a.cy)), shapes.INVERSE[scene.relation])
        return scene, rng

    shapes.ShapesDataset.scene = scene


def clip(args):
    import torch
    torch.set_num_threads(args.threads)
    from dreamlet.scoring import ClipScorer
    from dreamlet.training import TrainConfig, train
    if args.contrast:  # pair scenes come with their mirror image, the caption differing in the relation only
        use_minimal_pairs()
    run = Path(args.out) / args.name
    if args.minutes:
        import shutil
        shutil.rmtree(run, ignore_errors=True)
        train(TrainConfig(model="clip", out=str(run), minutes=args.minutes, batch_size=args.batch_size, sample_every=0,
                          settings=json.loads(args.set)), quiet=True)
    while not (Path(args.out) / "candidates.npz").exists():  # the draw phase may still be running beside us
        time.sleep(10)
    data = np.load(Path(args.out) / "candidates.npz")
    images, correct, texts, kinds = data["images"], data["correct"], list(data["texts"]), data["kinds"]
    K = correct.shape[1]
    scorer = ClipScorer(run / "model")
    scores = scorer.cosine(images, [t for t in texts for _ in range(K)]).view(len(texts), K).numpy()
    steps = open(run / "train_log.csv").read().strip().splitlines()[-1].split(",")[0]
    print(json.dumps(dict(name=args.name, minutes=args.minutes, steps=int(steps), contrast=args.contrast, settings=args.set,
                          **summary(correct, kinds, scores.argmax(1)))), flush=True)


def self_score(args):
    """The generator as its own judge (the implicit classifier of classifier-free guidance, Li et al. 2023's
    diffusion classifier): how much better it denoises each candidate with the caption than without,
    on the same noise and times for every candidate of a prompt."""
    import torch
    torch.set_num_threads(args.threads)
    from dreamlet.models.diffusion.schedule import alpha_sigma
    from dreamlet.pipeline import Pipeline
    from dreamlet.images import to_tensor
    data = np.load(Path(args.out) / "candidates.npz")
    images, correct, texts, kinds = data["images"], data["correct"], list(data["texts"]), data["kinds"]
    K = correct.shape[1]
    pipeline = Pipeline.load(args.generator)
    model, tokenizer = pipeline.model, pipeline.tokenizer
    times = torch.linspace(0.05, 0.95, args.times)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(args.times, 3, images.shape[1], images.shape[2], generator=generator)
    a, s = (v.view(-1, 1, 1, 1) for v in alpha_sigma(times))
    empty = tokenizer([""])
    scores = np.zeros((len(texts), K))
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = tokenizer([text])
            x0 = to_tensor(images[i * K:(i + 1) * K])                                  # (K, 3, S, S)
            x_t = (a[None] * x0[:, None] + s[None] * noise[None]).flatten(0, 1)       # (K T, 3, S, S)
            target = (a[None] * noise[None] - s[None] * x0[:, None]).flatten(0, 1)
            t = times.repeat(K)
            errors = []
            for caption in (ids, empty):
                v = model.denoiser.velocity(x_t, t, model.condition(caption.expand(len(t), -1)))
                errors.append(((v - target) ** 2).mean((1, 2, 3)).view(K, -1))
            scores[i] = (errors[1] - errors[0]).sum(1).numpy()
    print(json.dumps(dict(name="self", times=args.times, **summary(correct, kinds, scores.argmax(1)))), flush=True)


def probe(args):
    """On real pair pictures: how often the CLIP prefers the true canonical caption to the one with the
    relation inverted and to the one with the two colours swapped (chance 50 % each)."""
    import torch
    torch.set_num_threads(args.threads)
    from dreamlet.data.shapes import INVERSE, Scene, canonical_caption, random_pair, render
    from dreamlet.scoring import ClipScorer
    rng = np.random.default_rng(99)
    scenes = [random_pair(rng) for _ in range(256)]
    images = np.stack([render(s) for s in scenes])
    true = [canonical_caption(s) for s in scenes]
    inverted = [canonical_caption(Scene(s.objects, INVERSE[s.relation])) for s in scenes]
    swapped = []
    for s in scenes:
        a, b = s.objects
        swapped.append(f"a {b.color} {a.shape} {s.relation} a {a.color} {b.shape}")
    scorer = ClipScorer(Path(args.out) / args.name / "model")
    base = scorer.cosine(images, true)
    print(json.dumps(dict(name=args.name, relation=round(100 * float((base > scorer.cosine(images, inverted)).float().mean()), 1),
                          binding=round(100 * float((base > scorer.cosine(images, swapped)).float().mean()), 1))), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="phase", required=True)
    d = sub.add_parser("draw")
    d.add_argument("--generator", required=True)
    d.add_argument("--candidates", type=int, default=8)
    d.add_argument("--prompts", type=int, default=64)
    d.add_argument("--steps", type=int)
    g = sub.add_parser("self")
    g.add_argument("--generator", required=True)
    g.add_argument("--times", type=int, default=8)
    g.add_argument("--threads", type=int, default=1)
    pr = sub.add_parser("probe")
    pr.add_argument("--name", required=True)
    pr.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("clip")
    c.add_argument("--name", required=True)
    c.add_argument("--minutes", type=float, default=3)
    c.add_argument("--contrast", action="store_true")
    c.add_argument("--set", default="{}")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--threads", type=int, default=1)
    for p in (d, c, g, pr):
        p.add_argument("--out", default=str(ROOT / "runs" / "rerank"))
    args = parser.parse_args()
    dict(draw=draw, clip=clip, self=self_score, probe=probe)[args.phase](args)


if __name__ == "__main__":
    main()
