"""Candidates drawn in fewer steps, the chosen one drawn again in full: more candidates for the same drawing time?

The diffusion default draws 4 candidates of 20 sampler steps and keeps the one its own `match` prefers. 8 candidates
find more right pairs (tenth round, +3 to +6 points) at twice the time. A candidate's layout (how many objects, where)
is set by its starting noise and decided early, and `match` judges exactly that, at high noise levels. So the
candidates may be drawn in fewer steps, and only the chosen seed drawn again with the full 20 (from the same noise:
the same picture, drawn more finely).

For each validation job this draws `--candidates` K candidates of `--candidate-steps` steps (seeds K x seed + c, as
the default's), scores them by `match`, and judges, for each K' in `--choose-among` (the first K' candidates):
the chosen candidate as drawn, and its seed drawn again with `--steps`. Costs are in sampler steps per picture
(the 20-step default with 4 candidates: 80).

    .venv/bin/python bench/cheap_candidates.py MODEL [--candidates 8] [--candidate-steps 10] [--choose-among 4 6 8]
        [--kinds pair] [--name N --results F]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from docs_section import add_row  # noqa: E402

from dreamlet.data.shapes import benchmark_jobs  # noqa: E402
from dreamlet.judge import judge  # noqa: E402
from dreamlet.pipeline import Pipeline, candidate_seeds  # noqa: E402

KINDS = ("seen", "heldout", "pair")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--candidate-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="steps of the chosen seed's final drawing")
    parser.add_argument("--choose-among", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--prompt-set", default="validation")
    parser.add_argument("--jobs", type=int, help="only the first N jobs (a quick check)")
    parser.add_argument("--name")
    parser.add_argument("--results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline, K = Pipeline.load(args.model), args.candidates
    jobs = [job for job in benchmark_jobs(64, 2, args.prompt_set) if job[0].kind in args.kinds][:args.jobs]
    choose = pipeline.own_chooser()
    right: dict[str, dict[str, list[bool]]] = {}

    def count(name, kind, ok):
        right.setdefault(name, {}).setdefault(kind, []).append(float(ok))

    for prompt, seed in jobs:
        seeds = candidate_seeds(seed, K)
        drawn = pipeline.draw([prompt.text] * K, seeds, steps=args.candidate_steps)
        correct = [judge(image, prompt)["correct"] for image in drawn]
        score, _ = choose(drawn, prompt.text, seed)  # each candidate's own score: the first K' share theirs
        redrawn = {}  # candidate -> its verdict drawn again with --steps
        for among in args.choose_among:
            best = int(score[:among].argmax())
            if best not in redrawn:
                again = pipeline.draw([prompt.text], [seeds[best]], steps=args.steps)[0]
                redrawn[best] = judge(again, prompt)["correct"]
            count(f"best of {among} at {args.candidate_steps} steps, as drawn", prompt.kind, correct[best])
            count(f"best of {among} at {args.candidate_steps} steps, drawn again at {args.steps}", prompt.kind,
                  redrawn[best])
            count(f"oracle of {among}", prompt.kind, any(correct[:among]))
        count(f"one candidate at {args.candidate_steps} steps", prompt.kind, np.mean(correct))
    rows = {name: {kind: round(100 * float(np.mean(v)), 1) for kind, v in by_kind.items()}
            for name, by_kind in right.items()}
    for name, row in rows.items():
        print(f"{name:55s}", " / ".join(f"{row[k]:.1f}" for k in args.kinds if k in row))
    if args.results:
        add_row(args.results, dict(name=args.name or Path(args.model).parent.name, model=args.model,
                                   prompt_set=args.prompt_set, jobs=len(jobs), candidates=K,
                                   candidate_steps=args.candidate_steps, steps=args.steps, rows=rows),
                "cheap_candidates.py", sys.argv[1:])
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
