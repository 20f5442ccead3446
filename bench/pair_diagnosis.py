"""Where a model's pair pictures fail: the right two objects, their relation, extra objects.

    .venv/bin/python bench/pair_diagnosis.py runs/demo/model [--prompts 64] [--guidance 3] [--prompt-set evaluation]
        [--rerank 4] [--grid docs/images/NAME.png]

Draws the judge's prompts (`prompts` of each kind x 2 seeds, as `dreamlet eval`; the validation set unless told,
as designs are chosen there; each picture alone, or the best of `--rerank` K) for any family that draws shapes,
and prints one JSON line: the accuracies, then for pair pictures the share whose two largest objects are the two
asked for (`both`), the share of those whose relation is right (`relation_given_both`; 0.5 is chance), and how
many pictures hold two, or three and more, objects at least 30 % as large as the largest. Then `early`: how
often the model's clean estimate from pure noise (t = 0.95, no guidance) already puts the first object's colour
on the asked side of the second's (0.5: the caption's relation does not reach the layout; diffusion models
only). Last, `by_pair`: pair accuracy where the two asked objects share their colour, share their shape, or
differ in both; and `failures`: how the failing pair pictures fail (an asked object drawn twice as the two
largest, the colours right and a shape wrong, both asked objects in the wrong relation, other).
`--grid FILE` also saves six pair prompts whose objects differ in colour and shape, 6 seeds each, every picture
captioned with the two largest objects the judge found. docs/benchmarks.md (seventh, eighteenth and twenty-second
rounds) reads these figures.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamlet.data.shapes import COLORS, benchmark_jobs  # noqa: E402
from dreamlet.images import captioned_grid  # noqa: E402
from dreamlet.judge import find_objects, judge, summarize  # noqa: E402
from dreamlet.models.diffusion.schedule import alpha_sigma  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402

RELATION_HOLDS = {"to the left of": lambda dx, dy: dx < 0, "to the right of": lambda dx, dy: dx > 0,
                  "above": lambda dx, dy: dy < 0, "below": lambda dx, dy: dy > 0}


def early_relation(pipeline: Pipeline, pairs, t: float = 0.95, seeds: int = 4) -> float:
    """Share of (pair prompt, noise) where the clean estimate at time t puts the first colour's mass on the
    asked side of the second's (prompts whose two colours differ)."""
    pairs = [p for p in pairs if p.objects[0][0] != p.objects[1][0]]
    ids = pipeline.tokenizer([p.text for p in pairs]).to(pipeline.device)
    size, model = pipeline.image_size, pipeline.model
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
    a, s = alpha_sigma(torch.tensor(t))
    right = 0
    for seed in range(seeds):
        noise = torch.randn(len(pairs), 3, size, size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            x0 = a * noise - s * model.denoiser.velocity(noise, torch.full((len(pairs),), t), model.condition(ids)).cpu().float()
        for picture, prompt in zip(x0, pairs):
            def mass(color):  # where the estimate is closest to this colour, as weights summing to 1
                target = torch.tensor(COLORS[color], dtype=torch.float32) / 127.5 - 1
                return torch.softmax(-((picture - target[:, None, None]) ** 2).sum(0).flatten() / 0.5, 0).view(size, size)
            first, second = mass(prompt.objects[0][0]), mass(prompt.objects[1][0])
            dx, dy = ((first - second) * cols).sum(), ((first - second) * rows).sum()
            right += bool(RELATION_HOLDS[prompt.relation](dx, dy))
    return right / (len(pairs) * seeds)


def pair_kind(prompt) -> str:
    """Which pair this is: its two objects share their colour, share their shape, or differ in both."""
    (color_a, shape_a, _, _), (color_b, shape_b, _, _) = prompt.objects
    return "same colour" if color_a == color_b else "same shape" if shape_a == shape_b else "different"


def failure_kind(prompt, objects, result: dict) -> str:
    """How a wrong pair picture fails: its two largest objects, and the judge's verdicts on them."""
    got = [(o.color, o.shape) for o in objects[:2]]
    if len(got) < 2:
        return "fewer than two objects"
    if got[0] == got[1] and got[0] in [(color, shape) for color, shape, _, _ in prompt.objects]:
        return "an asked object twice"
    if result["both_objects"]:
        return "relation wrong"
    if result["color"]:
        return "colours right, a shape wrong"
    return "other"


def failure_grid(pipeline: Pipeline, pairs, path: str, prompts: int = 6, seeds: int = 6) -> None:
    """`prompts` pair prompts whose objects differ in colour and shape x `seeds` pictures, each captioned with
    the prompt and the two largest objects found, saved to `path`."""
    chosen = [p.text for p in pairs if pair_kind(p) == "different"][:prompts]
    texts = [text for text in chosen for _ in range(seeds)]
    images = pipeline.pictures(texts, list(range(seeds)) * len(chosen))
    captions = [f"{text} -> " + ", ".join(f"{o.color} {o.shape}" for o in find_objects(image)[:2])
                for text, image in zip(texts, images)]
    captioned_grid(images, captions, columns=seeds).save(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--prompt-set", choices=["validation", "evaluation"], default="validation")
    parser.add_argument("--rerank", type=int, default=1,
                        help="the best of K candidates by the model's own judgement (default 1: each picture alone)")
    parser.add_argument("--grid", help="also save a captioned grid of pair pictures to this file")
    args = parser.parse_args()
    pipeline = Pipeline.load(args.model)
    jobs = benchmark_jobs(args.prompts, 2, args.prompt_set)  # as `dreamlet eval --prompt-set ...`
    images = pipeline.pictures([p.text for p, _ in jobs], [seed for _, seed in jobs], guidance=args.guidance,
                               rerank=args.rerank)
    results = [(p, judge(image, p)) for (p, _), image in zip(jobs, images)]
    report = summarize(results)
    both = correct = two = three_plus = pictures = 0
    by_pair, failures = Counter(), Counter()
    for (prompt, _), image, (_, result) in zip(jobs, images, results):
        if prompt.kind != "pair":
            continue
        objects = find_objects(image)
        by_pair[pair_kind(prompt), result["correct"]] += 1
        if not result["correct"]:
            failures[failure_kind(prompt, objects, result)] += 1
        both, correct = both + result["both_objects"], correct + result["correct"]
        comparable = sum(o.area >= 0.3 * objects[0].area for o in objects) if objects else 0
        two, three_plus, pictures = two + (comparable == 2), three_plus + (comparable >= 3), pictures + 1
    pair_prompts = list(dict.fromkeys(p for p, _ in jobs if p.kind == "pair"))  # each prompt once
    print(json.dumps(dict(
        model=args.model, prompt_set=args.prompt_set, rerank=args.rerank, seen=report["seen"],
        heldout=report["heldout"], pair=report["pair"],
        both=both / pictures, relation_given_both=correct / max(both, 1), two_objects=two / pictures,
        three_plus=three_plus / pictures,
        early=early_relation(pipeline, pair_prompts) if hasattr(pipeline.model, "denoiser") else None,
        by_pair={kind: {"pictures": by_pair[kind, True] + by_pair[kind, False],
                        "correct": by_pair[kind, True] / max(by_pair[kind, True] + by_pair[kind, False], 1)}
                 for kind in ("same colour", "same shape", "different")},
        failures={kind: count / max(sum(failures.values()), 1) for kind, count in failures.most_common()})))
    if args.grid:
        failure_grid(pipeline, pair_prompts, args.grid)


if __name__ == "__main__":
    main()
