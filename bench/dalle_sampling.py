"""Seconds per picture for the DALL-E prior's ways of decoding: raster order with and without the KV
cache, and MaskGIT's parallel decoding at a few step counts. Writes a table into docs/benchmarks.md.

    .venv/bin/python bench/dalle_sampling.py --model runs/bench/families/dalle/model \\
        [--maskgit runs/bench/families/dalle-maskgit/model] [--batch 16]

The same 16 canonical prompts and seeds for every row, guidance on (so each step runs the batch twice).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from docs_section import keep_results, write_section  # noqa: E402
from time_to_accuracy import machine  # noqa: E402

import dreamlet  # noqa: E402
from dreamlet.data.shapes import benchmark_prompts  # noqa: E402


def seconds_per_picture(pipe, prompts: list[str], repeats: int, **options) -> float:
    ids = pipe.tokenizer(prompts)
    empty = pipe.tokenizer([""])
    S = pipe.image_size
    noise = torch.stack([torch.randn(3, S, S, generator=torch.Generator().manual_seed(i)) for i in range(len(prompts))])
    best = float("inf")
    for _ in range(repeats):  # the fastest of a few runs: the least disturbed by anything else on the machine
        started = time.perf_counter()
        pipe.model.generate(ids, empty, noise, **options)
        best = min(best, time.perf_counter() - started)
    return best / len(prompts)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="an autoregressive dalle model directory")
    parser.add_argument("--maskgit", help="a maskgit dalle model directory")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = [p.text for p in benchmark_prompts(args.batch, 0, 0, seed=5)][:args.batch]
    rows = []
    with torch.no_grad():
        pipe = dreamlet.load(args.model)
        tokens = pipe.model.tokens
        cached = seconds_per_picture(pipe, prompts, args.repeats)
        uncached = seconds_per_picture(pipe, prompts, args.repeats, use_cache=False)
        rows += [(f"autoregressive, KV cache ({tokens} tokens, one network pass per token)", cached),
                 ("autoregressive, no cache (the whole prefix again for every code)", uncached)]
        if args.maskgit:
            pipe = dreamlet.load(args.maskgit)
            for steps in (4, 8, 16):
                rows.append((f"MaskGIT, {steps} parallel steps", seconds_per_picture(pipe, prompts, args.repeats, steps=steps)))
    command = " ".join(["python", "bench/dalle_sampling.py"] + [shlex.quote(a) for a in sys.argv[1:]])
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; command: `{command}`.",
             f"A batch of {args.batch} prompts with classifier-free guidance, fastest of {args.repeats} runs.", "",
             "| decoding | s/picture | vs. cached |", "|---|---|---|"]
    lines += [f"| {what} | {seconds:.4f} | {seconds / cached:.2f} x |" for what, seconds in rows]
    for what, seconds in rows:
        print(f"{seconds:.4f} s/picture  {what}")
    keep_results("dalle_sampling", command, [dict(decoding=what, seconds_per_picture=seconds) for what, seconds in rows],
                 batch=args.batch, repeats=args.repeats)
    lines[0] += " Raw results: bench/results/dalle_sampling.json."
    write_section("dalle_sampling", "DALL-E sampling time: KV cache and MaskGIT", "\n".join(lines))


if __name__ == "__main__":
    main()
