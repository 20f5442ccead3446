"""Other ways to guide a diffusion model while it draws, judged on the shapes prompts (the validation set
unless told, as designs are chosen there): K candidates per prompt, what one picture gets on average
("alone"), the model's own best of K (`match`, as it draws by default) and the oracle of K.

    .venv/bin/python bench/guidance_variants.py MODEL [--weak WEAK_MODEL] cfg:3 interval:3,0.6,1,2 auto:3,1 ...
        [--candidates 4] [--results bench/results/X.json]

Variants (x0: the clean estimate; c, u: the model's with the caption and with the empty one):
- cfg:G            constant classifier-free guidance, x0 = u + G (c - u) (the default before the eleventh
                   round, G = 3);
- interval:G,LO,HI,OUT   G while LO <= t <= HI, OUT elsewhere (guidance in a limited interval,
                   Kynkaanniemi et al. 2024: the trade of copies against wrong shapes is made at high noise);
- auto:G,W         classifier-free guidance G plus W (c - w) away from a weaker model's estimate w with the
                   same caption (autoguidance, Karras et al. 2024: the weaker model makes the same mistakes,
                   more often); WEAK_MODEL: a model with the same tokenizer trained for fewer steps.
`--sampler` draws every variant with another sampler (the family's samplers are deterministic):
- ddim_eta:E[,LO,HI]      DDIM with eta E (Song et al. 2021, eq. 16; 1: as stochastic as DDPM) while LO <= t <= HI,
                          eta 0 elsewhere (fresh noise while the layout is decided lets a drawing drop a copy);
- dpmpp_2m_sde:E[,LO,HI]  DPM-Solver++(2M) SDE (Lu et al. 2022, as k-diffusion writes it), eta E in [LO, HI].
The experiments live here, not in the family. Two are what the family draws with guidance G: cfg:G with
`guidance_detail` 1, and interval:G,0.6,1,H with `guidance_detail` (H - 1) / (G - 1) (the default since the eleventh
round: interval:3,0.6,1,2); autoguidance and other intervals are not in the family.
"""
from __future__ import annotations

import argparse
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
from dreamlet.images import to_tensor, to_uint8  # noqa: E402
from dreamlet.judge import judge  # noqa: E402
from dreamlet.models.diffusion.sampling import SAMPLERS  # noqa: E402
from dreamlet.models.diffusion.schedule import alpha_sigma, half_log_snr, sampling_times  # noqa: E402
from dreamlet.pipeline import Pipeline, candidate_seeds  # noqa: E402

KINDS = ("seen", "heldout", "pair")


def guided(model, weak, ids, empty, variant: str):
    """A sampler's denoise(x, t) -> x0 for one variant."""
    kind, values = variant.split(":")
    values = [float(v) for v in values.split(",")]
    both = model.denoiser.guided(model.condition(torch.cat([ids, empty.expand(len(ids), -1)])), 1.0, 0.0, False)
    weaker = weak.denoiser.guided(weak.condition(ids), 1.0, 0.0, False) if kind == "auto" else None

    def denoise(x, t):
        c, u = both(x.repeat(2, 1, 1, 1), t).chunk(2)
        if kind == "cfg":
            x0 = u + values[0] * (c - u)
        elif kind == "interval":
            g, low, high, outside = values
            x0 = u + (g if low <= float(t) <= high else outside) * (c - u)
        elif kind == "auto":
            x0 = u + values[0] * (c - u) + values[1] * (c - weaker(x, t))
        else:
            raise ValueError(f"unknown variant {variant!r}")
        return x0.clamp(-1, 1)
    return denoise


def stochastic_sampler(spec: str, generator: torch.Generator):
    """A sampler(denoise, x, times) that adds fresh noise while LO <= t <= HI (see the module's docstring)."""
    name, values = spec.split(":")
    eta, low, high = ([float(v) for v in values.split(",")] + [0.0, 1.0])[:3]
    if name not in ("ddim_eta", "dpmpp_2m_sde"):
        raise ValueError(f"unknown sampler {spec!r}")

    def sample(denoise, x, times):
        previous, h_previous = None, None
        for i in range(len(times) - 1):
            t, t_next = times[i], times[i + 1]
            (a, s), (a_next, s_next) = alpha_sigma(t), alpha_sigma(t_next)
            e = eta if low <= float(t) <= high else 0.0
            x0 = denoise(x, t)
            z = torch.randn(x.shape, generator=generator)
            if t_next == 0:
                x = x0
            elif name == "ddim_eta":
                c = e * (s_next / s) * torch.sqrt(1 - (a / a_next) ** 2)
                x = (a_next * x0 + torch.sqrt(s_next ** 2 - c ** 2) * (x - a * x0) / s + c * z).float()
            else:
                h = half_log_snr(t_next) - half_log_snr(t)
                d = x0 if previous is None else x0 + (x0 - previous) * h / (2 * h_previous)
                x = ((s_next / s) * torch.exp(-h * e) * x - a_next * torch.expm1(-h * (1 + e)) * d
                     + s_next * torch.sqrt(-torch.expm1(-2 * h * e)) * z).float()
                h_previous = h
            previous = x0
        return x
    return sample


@torch.no_grad()
def draw(pipeline: Pipeline, weak, texts: list[str], seeds: list[int], variant: str, batch: int = 64,
         sampler: str = "") -> np.ndarray:
    model, out = pipeline.model, []
    empty = pipeline.tokenizer([""])
    for i in range(0, len(texts), batch):
        ids = pipeline.tokenizer(texts[i:i + batch])
        noise = torch.stack([torch.randn((3, pipeline.image_size, pipeline.image_size),
                                         generator=torch.Generator().manual_seed(s)) for s in seeds[i:i + batch]])
        sample = (stochastic_sampler(sampler, torch.Generator().manual_seed(seeds[i])) if sampler
                  else SAMPLERS[model.config.sampler])
        x = sample(guided(model, weak, ids, empty, variant), noise, sampling_times(model.config.steps))
        out.append(to_uint8(x.clamp(-1, 1)))
    return np.concatenate(out)


@torch.no_grad()
def match_scores(pipeline: Pipeline, images: np.ndarray, texts: list[str], job_seeds: list[int]) -> np.ndarray:
    out = []
    for i in range(0, len(images), 128):
        noise = torch.stack([pipeline.match_noise(s) for s in job_seeds[i:i + 128]])
        out.append(pipeline.model.match(to_tensor(images[i:i + 128]).float(), pipeline.tokenizer(texts[i:i + 128]),
                                        None, noise).numpy())
    return np.concatenate(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--weak", help="the weaker model for auto: variants")
    parser.add_argument("--sampler", default="", help="ddim_eta:E[,LO,HI] or dpmpp_2m_sde:E[,LO,HI] (the docstring)")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-set", choices=["validation", "evaluation"], default="validation")
    parser.add_argument("--results", help="a JSON file to add these rows to (bench/results/...)")
    args = parser.parse_args()
    pipeline, K = Pipeline.load(args.model), args.candidates
    weak = Pipeline.load(args.weak).model.eval() if args.weak else None
    jobs = benchmark_jobs(args.prompts, 2, args.prompt_set)
    kinds = np.array([p.kind for p, _ in jobs])
    texts = [p.text for p, _ in jobs for _ in range(K)]
    seeds = [c for _, s in jobs for c in candidate_seeds(s, K)]
    score_seeds = [s for _, s in jobs for _ in range(K)]

    def by_kind(values):
        return {kind: round(float(values[kinds == kind].mean()), 3) for kind in KINDS}
    for variant in args.variants:
        started = time.perf_counter()
        images = draw(pipeline, weak, texts, seeds, variant, sampler=args.sampler)
        correct = np.array([judge(image, p)["correct"] for image, (p, _) in
                            zip(images, [job for job in jobs for _ in range(K)])]).reshape(len(jobs), K)
        score = match_scores(pipeline, images, texts, score_seeds).reshape(len(jobs), K)
        row = dict(name=f"{Path(args.model).name} {variant}" + (f" {args.sampler}" if args.sampler else ""),
                   model=args.model, variant=variant, sampler=args.sampler or None,
                   weak=args.weak if variant.startswith("auto") else None, candidates=K, prompt_set=args.prompt_set,
                   alone=by_kind(correct.mean(1)), best=by_kind(correct[np.arange(len(jobs)), score.argmax(1)]),
                   oracle=by_kind(correct.any(1)), seconds=round(time.perf_counter() - started, 1))
        print(json.dumps(row), flush=True)
        if args.results:
            add_row(args.results, row, "guidance_variants.py", sys.argv[1:])


if __name__ == "__main__":
    main()
