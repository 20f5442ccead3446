"""Could the diffusion model's own judgement pick better among its candidates? `match()` (minus the denoising
error under the caption at t = 0.55 ... 0.95) finds about a third of the gap between one picture and the oracle
(tenth round). This draws K candidates for each validation prompt, judges each exactly, records each one's
denoising error at ten noise levels (t = 0.05 ... 0.95, the noise `match` uses), under its caption and under the
empty caption, plain and averaged over 4 x 4 pixel blocks first (a coarse, layout-level error), and prints what
keeping the best of 4 and of 8 gives for each way of combining them:

- match T: minus the caption's error summed over the levels T (the default: t >= 0.5);
- simple L T: minus (caption's error + L x empty caption's error): prefer pictures that are also plain to the
  model without the caption (fewer objects), where the caption's error alone might reward copies;
- ratio T: minus caption's error / empty caption's error;
- elbo: the caption's error weighted as the ELBO weights a v-prediction error (alpha / sigma), every level;
- consensus P: the candidate closest to the others (minimum Bayes risk) in pixels averaged over P x P blocks;
- preview P: the candidate closest to the model's own caption preview (the layout it expects), P x P blocks;
- ... + match: the sum of a chooser's and match's ranks among the job's candidates (match breaks ties).

    .venv/bin/python bench/chooser_variants.py MODEL --cache runs/chooser/s0 [--results bench/results/X.json]

The candidates and errors are cached in CACHE.npz and CACHE_err.npy (drawing 3,072 pictures and 20 network
passes each take about 20 minutes on one thread), so the combinations can be changed and rerun in seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import add_row  # noqa: E402
from self_rerank import draw_candidates  # noqa: E402

from dreamlet.data.shapes import benchmark_jobs  # noqa: E402
from dreamlet.images import to_tensor  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402

KINDS = ("seen", "heldout", "pair")
TIMES = np.array([0.05 + 0.1 * i for i in range(10)])


def candidates(pipeline: Pipeline, jobs, K: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """self_rerank's K candidates per job and their verdicts (J, K), read from the cache when it has them."""
    if cache.with_suffix(".npz").exists():
        saved = np.load(cache.with_suffix(".npz"))
        return saved["images"], saved["correct"].reshape(len(jobs), K)
    images, correct, _ = draw_candidates(pipeline, jobs, K)
    np.savez(cache.with_suffix(".npz"), images=images, correct=correct)
    return images, correct


@torch.no_grad()
def errors(pipeline: Pipeline, images: np.ndarray, texts: list[str], seeds: list[int], cache: Path) -> np.ndarray:
    """(N, levels, caption / empty caption, plain / 4x4-pooled) mean squared velocity errors; the candidates of one
    job share the noise match() would use."""
    path = Path(f"{cache}_err.npy")
    if path.exists():
        return np.load(path)
    model, out = pipeline.model, np.zeros((len(images), len(TIMES), 2, 2), np.float32)
    for i in range(0, len(images), 128):
        x = to_tensor(images[i:i + 128]).float()
        noise = torch.stack([pipeline.match_noise(s) for s in seeds[i:i + 128]])
        for c, captions in enumerate([texts[i:i + 128], [""] * len(x)]):
            cond = model.condition(pipeline.tokenizer(captions))
            for j, t in enumerate(TIMES):
                residual = model.velocity_error(x, noise, float(t), cond)
                out[i:i + len(x), j, c, 0] = residual.pow(2).flatten(1).mean(1).numpy()
                out[i:i + len(x), j, c, 1] = F.avg_pool2d(residual, 4).pow(2).flatten(1).mean(1).numpy()
    np.save(path, out)
    return out


def scorers(err: np.ndarray) -> dict[str, np.ndarray]:
    """Every combination's score (J, K), higher is better."""
    levels = {"t>=0.5": TIMES > 0.5, "all": TIMES > 0, "t<0.5": TIMES < 0.5, "0.35-0.65": (TIMES > 0.3) & (TIMES < 0.7)}
    elbo = np.array([math.cos(math.pi * t / 2) / math.sin(math.pi * t / 2) for t in TIMES])
    out = {}
    for pooled, tag in ((0, ""), (1, ", pooled 4x4")):
        for name, keep in levels.items():
            caption, empty = err[..., keep, 0, pooled].sum(-1), err[..., keep, 1, pooled].sum(-1)
            out[f"match {name}{tag}"] = -caption
            for weight in (0.25, 0.5, 1.0):
                out[f"simple {weight} {name}{tag}"] = -(caption + weight * empty)
            out[f"ratio {name}{tag}"] = -caption / empty
        out[f"elbo{tag}"] = -(err[..., 0, pooled] * elbo).sum(-1)
    return out


@torch.no_grad()
def previews(pipeline: Pipeline, captions: list[str]) -> torch.Tensor:
    """The model's caption preview (J, 3, S, S) of each job's caption: the layout it expects."""
    return torch.cat([pipeline.model.condition(pipeline.tokenizer(captions[i:i + 64])).preview.float()
                      for i in range(0, len(captions), 64)])


def picture_scorers(x: torch.Tensor, preview: torch.Tensor, match: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Choosers that compare the candidates' pictures x (J K, 3, S, S), among each job's first k (J, k), higher
    is better: with each other and with the caption preview, alone and with `match` (J, K) (the sum of both
    ranks; match breaks ties)."""
    J, K = match.shape
    out = {}
    for blocks in (1, 4, 8):
        pooled = F.avg_pool2d(x, blocks).flatten(1).reshape(J, K, -1)[:, :k]
        out[f"consensus {blocks}"] = -torch.cdist(pooled, pooled).pow(2).sum(-1).numpy()
        out[f"preview {blocks}"] = -(pooled - F.avg_pool2d(preview, blocks).flatten(1)[:, None]).pow(2).sum(-1).numpy()
    rank = lambda score: score.argsort(1).argsort(1)  # noqa: E731
    return out | {f"{name} + match": rank(score) + rank(match[:, :k]) + 1e-3 * rank(match[:, :k])
                  for name, score in out.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--cache", required=True, help="path prefix for the candidates and errors")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--name", help="the row's name (default: the model directory)")
    parser.add_argument("--results", help="a JSON file to add this row to (bench/results/...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline, K, cache = Pipeline.load(args.model), args.candidates, Path(args.cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    jobs = benchmark_jobs(64, 2, "validation")
    images, correct = candidates(pipeline, jobs, K, cache)
    texts = [p.text for p, _ in jobs for _ in range(K)]
    err = errors(pipeline, images, texts, [s for _, s in jobs for _ in range(K)], cache).reshape(len(jobs), K,
                                                                                               len(TIMES), 2, 2)
    kinds = np.array([p.kind for p, _ in jobs])

    def by_kind(right):
        return [round(100 * float(right[kinds == kind].mean())) for kind in KINDS]
    rows, by_errors = {}, scorers(err)
    x, preview = to_tensor(images).float(), previews(pipeline, [p.text for p, _ in jobs])
    for k in (4, 8):
        for name, score in (by_errors | picture_scorers(x, preview, by_errors["match t>=0.5"], k)).items():
            rows.setdefault(name, {})[k] = by_kind(correct[np.arange(len(jobs)), score[:, :k].argmax(1)])
    row = dict(name=args.name or args.model, model=args.model, candidates=K, prompt_set="validation",
               alone=by_kind(correct.mean(1)), oracle={k: by_kind(correct[:, :k].any(1)) for k in (4, 8)},
               best_of=rows)
    for name, picked in rows.items():
        print(f"{name:32s} best of 4 {picked[4]}  best of 8 {picked[8]}")
    print(json.dumps({k: row[k] for k in ("alone", "oracle")}))
    if args.results:
        add_row(args.results, row, "chooser_variants.py", sys.argv[1:])


if __name__ == "__main__":
    main()
