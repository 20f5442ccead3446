"""Can a model pick its own best picture? Draw K candidates for each of the judge's prompts (the
validation set unless told, as designs are chosen there), judge every candidate exactly, score each
with the model's own judgement, and print what keeping the best of k (k = 1, 2, 4 ... K) would give.

    .venv/bin/python bench/self_rerank.py MODEL [--candidates 8] [--scorer match] [--prompt-set validation]
    .venv/bin/python bench/self_rerank.py MODEL ... --results bench/results/tenth_round.json   # add its row there
    .venv/bin/python bench/self_rerank.py PRIOR --candidates 16 --scorer pmi clip --clip CLIP   # one draw, two rows

Scorers (higher is better):
- match: a diffusion model's own `match()` (minus its denoising error under the caption at t >= 0.5),
  what `Pipeline.best_of` uses without a CLIP;
- classifier: a diffusion model's implicit classifier at the same noise levels (how much better it
  denoises with the caption than without; the sixth round's "self reranking");
- discriminator: a GAN's discriminator on (picture, caption);
- pmi: a DALL-E prior's own `match()` (the log-likelihood of the picture's codes, re-encoded, under the
  caption minus under the empty caption), what `Pipeline.best_of` uses without a CLIP (`--rerank K`);
- likelihood: the first half of that alone (`DalleModel.log_likelihood`);
- clip: a CLIP model's cosine similarity of picture and caption (`--clip DIR`), what `--rerank K --clip DIR` uses
  (DALL-E's own recipe: Ramesh et al. 2021 kept the best of 512 by CLIP);
- captioner: log p(caption | picture) under a small captioner trained from scratch on shapes first
  (`--captioner-steps`; bench/captioner_chooser.py's), a generative score that has to account for every word in order;
- captioner-contrast: the same captioner's log p(caption | picture) against the caption's swapped-word alternatives
  (`captioner_chooser.contrast_scores`): which order of its words the picture supports.
Several scorers judge the same candidates, one row each.
classifier, discriminator and likelihood are experiments kept here, not in the families. Each row: the first
candidate alone, the mean over candidates (what one picture gets on average, the steadier "alone" figure), the
scorer's pick among the first k, and the oracle (any of the first k right: a perfect judge's ceiling); for pair
prompts also where the picks fail (`pairs`: the share with both asked objects, and the relation right among those).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import add_row  # noqa: E402

from dreamlet.data.shapes import benchmark_jobs  # noqa: E402
from dreamlet.images import to_tensor  # noqa: E402
from dreamlet.judge import judge  # noqa: E402
from dreamlet.pipeline import Pipeline, candidate_seeds  # noqa: E402

KINDS = ("seen", "heldout", "pair")


@torch.no_grad()
def scores(pipeline: Pipeline, scorer: str, images: np.ndarray, texts: list[str], job_seeds: list[int],
           clip: str | None = None, captioner_steps: int = 1500, captioner_file: str | None = None) -> np.ndarray:
    """One score per candidate (its caption in `texts`); candidates of one job share the noise of its seed."""
    model, out = pipeline.model, []
    if scorer == "clip":
        from dreamlet.scoring import ClipScorer
        return ClipScorer(clip).cosine(images, texts).numpy()
    if scorer.startswith("captioner"):
        from captioner_chooser import caption_scores, contrast_scores
        captioner = trained_captioner(pipeline.tokenizer, captioner_steps, captioner_file)
        if scorer == "captioner-contrast":
            return contrast_scores(captioner, pipeline.tokenizer, images, texts)
        return caption_scores(captioner, pipeline.tokenizer, images, pipeline.tokenizer(texts))
    for i in range(0, len(images), 128):
        x, ids = to_tensor(images[i:i + 128]).float(), pipeline.tokenizer(texts[i:i + 128])
        if scorer in ("match", "classifier"):
            noise = torch.stack([pipeline.match_noise(s) for s in job_seeds[i:i + 128]])  # as best_of's
            score = model.match(x, ids, None, noise)
            if scorer == "classifier":
                score = score - model.match(x, pipeline.tokenizer([""] * len(x)), None, noise)
        elif scorer == "discriminator":
            score = model.discriminator(x, model.caption(ids))
        elif scorer == "pmi":  # the DALL-E prior's own match(), as --rerank K without a CLIP judges
            score = model.match(x, ids, pipeline.tokenizer([""]))
        else:  # likelihood
            score = model.log_likelihood(model.vq.encode(x).flatten(1), ids)
        out.append(score.float().cpu().numpy())
    return np.concatenate(out)


@functools.cache
def trained_captioner(tokenizer, steps: int, file: str | None = None):
    """bench/captioner_chooser.py's captioner, trained once for every captioner scorer of a run; read from `file`
    (safetensors) where an earlier run saved it there."""
    from safetensors.torch import save_file

    from captioner_chooser import load_captioner, train_captioner
    if file and Path(file).is_file():
        return load_captioner(tokenizer, file)
    with torch.enable_grad():  # scores() runs without gradients; training needs them
        captioner, seconds = train_captioner(tokenizer, steps)
    print(f"captioner: {steps} steps in {seconds:.0f} s", flush=True)
    if file:
        save_file(captioner.state_dict(), file)
    return captioner


def draw_candidates(pipeline: Pipeline, jobs: list, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K candidates per (prompt, seed) job, drawn as best_of draws them (seeds candidate_seeds(seed, K)); whether
    the judge finds each right (J, K); and, for pair jobs, whether its two largest objects are the two asked for,
    whatever their relation (J, K; False for single jobs)."""
    images = pipeline.draw([p.text for p, _ in jobs for _ in range(K)],
                           [c for _, s in jobs for c in candidate_seeds(s, K)])
    prompts = [p for p, _ in jobs for _ in range(K)]
    verdicts = [judge(image, prompt) for image, prompt in zip(images, prompts)]
    correct = np.array([v["correct"] for v in verdicts]).reshape(len(jobs), K)
    both = np.array([v.get("both_objects", False) for v in verdicts]).reshape(len(jobs), K)
    return images, correct, both


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--scorer", nargs="+", default=["match"],
                        choices=["match", "classifier", "discriminator", "likelihood", "pmi", "clip", "captioner",
                                 "captioner-contrast"])
    parser.add_argument("--clip", help="the CLIP model directory of --scorer clip")
    parser.add_argument("--captioner-steps", type=int, default=1500, help="training steps of --scorer captioner")
    parser.add_argument("--captioner-file", help="a .safetensors the captioner is read from (or saved to, trained)")
    parser.add_argument("--save", help="an .npz of every candidate, its verdict and its scores (to score it later)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-set", choices=["validation", "evaluation"], default="validation")
    parser.add_argument("--name", help="the row's name (default: the model directory)")
    parser.add_argument("--results", help="a JSON file to add this row to (bench/results/...)")
    args = parser.parse_args()
    pipeline, K = Pipeline.load(args.model), args.candidates
    jobs = benchmark_jobs(args.prompts, 2, args.prompt_set)
    texts = [p.text for p, _ in jobs for _ in range(K)]
    started = time.perf_counter()
    images, correct, both = draw_candidates(pipeline, jobs, K)
    kinds = np.array([p.kind for p, _ in jobs])

    def by_kind(values):
        return {kind: round(float(values[kinds == kind].mean()), 3) for kind in KINDS}
    saved = dict(images=images, correct=correct, kinds=kinds, both=both)
    pairs = kinds == "pair"

    def pair_detail(picked, both):  # where a pick's pairs fail: the objects, or their relation
        return dict(both_objects=round(float(both[pairs].mean()), 3),
                    relation_given_both=round(float(picked[pairs].sum() / max(both[pairs].sum(), 1)), 3))
    for scorer in args.scorer:
        score = scores(pipeline, scorer, images, texts, [s for _, s in jobs for _ in range(K)], args.clip,
                       args.captioner_steps, args.captioner_file)
        score = saved[scorer] = score.reshape(len(jobs), K)
        best_of = {}
        for k in [2 ** i for i in range(1, 8) if 2 ** i <= K]:
            choice = (np.arange(len(jobs)), score[:, :k].argmax(1))
            best_of[k] = dict(picked=by_kind(correct[choice]), oracle=by_kind(correct[:, :k].any(1)),
                              pairs=pair_detail(correct[choice], both[choice]))
        name = args.name or args.model  # one row per scorer: each its own name in a results file
        row = dict(name=f"{name}, {scorer}" if len(args.scorer) > 1 else name, model=args.model, scorer=scorer,
                   candidates=K, prompt_set=args.prompt_set, first=by_kind(correct[:, 0]),
                   mean=by_kind(correct.mean(1)), pairs=pair_detail(correct, both), best_of=best_of,
                   seconds=round(time.perf_counter() - started, 1))
        if scorer == "clip":
            row["clip"] = args.clip
        if scorer.startswith("captioner"):
            row["captioner_steps"] = args.captioner_steps
        print(json.dumps(row))
        if args.results:
            add_row(args.results, row, "self_rerank.py", sys.argv[1:])
    if args.save:
        np.savez(args.save, **saved)


if __name__ == "__main__":
    main()
