"""Could the diffusion model choose among its candidates by comparing its caption with near-miss captions?

`match()` keeps the candidate with the smallest denoising error under its caption. It does not see a copied object
or a shape given to the wrong colour: such a picture fits the caption about as well as a right one (sixteenth
round). A diffusion classifier (Li et al. 2023) asks instead which of several captions fits a picture best. Here
the alternatives are the caption's own words rearranged: each word replaced by another word of the caption ("a
cyan diamond below a cyan diamond") and each two words swapped ("a cyan triangle below a cyan diamond"), made
without knowing the caption's grammar, so any data has them. A candidate that fits some near miss better than its
own caption (a copy fits "... a cyan diamond below a cyan diamond") is a worse choice.

For each validation job this draws K candidates (chooser_variants.py's cache), records each one's denoising error
under its caption and under every near miss at a few noise levels (one noise per job, shared by its candidates and
captions, as match() shares it), and prints what the best of K gives for each way of scoring:

- match: the default (minus the caption's error at t = 0.55 ... 0.95);
- margin L: minus the caption's error plus L x the smallest near miss's error (how far it beats the best rival);
- posterior T: log softmax over the caption and its near misses of minus error / T (the diffusion classifier);
- ... + match: the sum of both ranks among the job's candidates.

    .venv/bin/python bench/negative_chooser.py MODEL --cache runs/chooser/s0 [--kinds pair] [--results F]
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import permutations
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from chooser_variants import candidates  # noqa: E402
from docs_section import add_row  # noqa: E402

from dreamlet.data.shapes import benchmark_jobs  # noqa: E402
from dreamlet.images import to_tensor  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402

KINDS = ("seen", "heldout", "pair")
LEVELS = (0.45, 0.65, 0.85)


def near_misses(caption: str) -> dict[str, list[str]]:
    """The caption's words rearranged, by kind of edit: one word replaced by another of its words, two swapped."""
    words, out = caption.split(), {"replace": set(), "swap": set()}
    for i, j in permutations(range(len(words)), 2):
        if words[i] != words[j]:
            out["replace"].add(" ".join(words[:i] + [words[j]] + words[i + 1:]))
            swapped = list(words)
            swapped[i], swapped[j] = words[j], words[i]
            out["swap"].add(" ".join(swapped))
    return {kind: sorted(texts - {caption}) for kind, texts in out.items()}


@torch.no_grad()
def caption_errors(pipeline: Pipeline, pictures: np.ndarray, captions: list[str], noise: torch.Tensor) -> np.ndarray:
    """Mean squared velocity error (captions, K, levels) of K pictures under each caption, one shared noise."""
    model, x = pipeline.model, to_tensor(pictures).float()
    cond = model.condition(pipeline.tokenizer(captions))
    C, K = len(captions), len(x)
    index = torch.arange(C).repeat_interleave(K)
    expanded = type(cond)(**{k: (v[index] if torch.is_tensor(v) else v) for k, v in vars(cond).items()})
    out = np.zeros((C, K, len(LEVELS)), np.float32)
    for j, t in enumerate(LEVELS):
        residual = model.velocity_error(x.repeat(C, 1, 1, 1), noise.expand_as(x).repeat(C, 1, 1, 1), t, expanded)
        out[:, :, j] = residual.pow(2).flatten(1).mean(1).reshape(C, K).numpy()
    return out


def scores(own: np.ndarray, rivals: np.ndarray, match: np.ndarray) -> dict[str, np.ndarray]:
    """Each chooser's score per candidate (K,), higher is better; own (K,), rivals (N, K) summed over levels."""
    rank = lambda s: s.argsort().argsort() + 1e-3 * match.argsort().argsort()  # noqa: E731
    out = {"match": match, "own error": -own}
    for weight in (0.5, 1.0):
        out[f"margin {weight}"] = -own + weight * rivals.min(0)
    everything = np.concatenate([own[None], rivals])
    for temperature in (0.001, 0.003, 0.01, 0.03):
        logits = -everything / temperature
        out[f"posterior {temperature}"] = logits[0] - np.logaddexp.reduce(logits, 0)
    return out | {f"{name} + match": rank(s) + rank(match) for name, s in list(out.items()) if name != "match"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--cache", required=True, help="path prefix for the candidates and errors")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), help="the prompt kinds to draw and score")
    parser.add_argument("--name")
    parser.add_argument("--results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline, K, cache = Pipeline.load(args.model), args.candidates, Path(args.cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    jobs = [job for job in benchmark_jobs(64, 2, "validation") if job[0].kind in args.kinds]
    images, correct = candidates(pipeline, jobs, K, cache)
    images = images.reshape(len(jobs), K, *images.shape[1:])
    path = Path(f"{cache}_near_misses.npz")
    saved = dict(np.load(path)) if path.exists() else {}
    picked: dict[str, dict[str, dict[str, list[bool]]]] = {}
    for j, (prompt, seed) in enumerate(jobs):
        misses = near_misses(prompt.text)
        captions = [prompt.text] + misses["replace"] + misses["swap"]
        if f"e{j}" not in saved:
            saved[f"e{j}"] = caption_errors(pipeline, images[j], captions, pipeline.match_noise(seed))
            saved[f"m{j}"] = pipeline.model.match(to_tensor(images[j]).float(), pipeline.tokenizer([prompt.text] * K),
                                                  None, pipeline.match_noise(seed).expand(K, -1, -1, -1)).numpy()
        err, match = saved[f"e{j}"].sum(-1), saved[f"m{j}"]
        R = len(misses["replace"])
        for rivals_name, rivals in (("all", err[1:]), ("replace", err[1:1 + R]), ("swap", err[1 + R:])):
            for name, score in scores(err[0], rivals, match).items():
                if name in ("match", "own error") and rivals_name != "all":
                    continue  # no rivals in them: counted once, with the first set
                key = name if name in ("match", "own error") else f"{name} [{rivals_name}]"
                picked.setdefault(key, {}).setdefault(prompt.kind, []).append(bool(correct[j, score.argmax()]))
        picked.setdefault("oracle", {}).setdefault(prompt.kind, []).append(bool(correct[j].any()))
        if j % 32 == 0:
            np.savez(path, **saved)
    np.savez(path, **saved)
    rows = {name: {kind: round(100 * float(np.mean(v)), 1) for kind, v in by_kind.items()}
            for name, by_kind in picked.items()}
    for name, row in rows.items():
        print(f"{name:40s} {row}")
    if args.results:
        add_row(args.results, dict(name=args.name or args.model, model=args.model, candidates=K, levels=LEVELS,
                                   prompt_set="validation", best_of=rows), "negative_chooser.py", sys.argv[1:])


if __name__ == "__main__":
    main()
