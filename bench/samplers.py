"""Sampling: judged accuracy and seconds per picture against the number of sampler steps, for each of
the diffusion family's samplers, and the peak memory drawing takes. Writes a table and a plot
(docs/images/samplers.png) into docs/benchmarks.md.

    .venv/bin/python bench/samplers.py --model runs/bench/curves/diffusion/model [--steps 5 10 20 50 100]

The same model, prompts and seeds for every row; only the sampler and its number of steps change.
Memory: the peak bytes of live tensors while drawing a batch of 16 (the counter bench/memory.py and the
--max-memory planner use on a CPU), beside the model's own weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import command_line, save_figure, write_section  # noqa: E402
from time_to_accuracy import machine  # noqa: E402

from dreamlet.evaluation import evaluate_shapes  # noqa: E402
from dreamlet.models.diffusion.sampling import SAMPLERS  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402
from dreamlet.scaling import peak_bytes  # noqa: E402

MiB = 2 ** 20


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (accuracy, seconds) = plt.subplots(1, 2, figsize=(10, 3.6))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == sampler]
        steps = [r["steps"] for r in mine]
        accuracy.plot(steps, [100 * r["seen"] for r in mine], marker="o", label=f"{sampler}: seen single")
        accuracy.plot(steps, [100 * r["pair"] for r in mine], marker="s", linestyle="--", label=f"{sampler}: pair")
        seconds.plot(steps, [r["seconds_per_image"] for r in mine], marker="o", label=sampler)
    for axis in (accuracy, seconds):
        axis.set_xscale("log")
        axis.set_xlabel("sampler steps")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    accuracy.set_ylabel("judged correct (%)")
    accuracy.set_ylim(-2, 102)
    seconds.set_ylabel("seconds per picture")
    save_figure(figure, path, title)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a diffusion model directory")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "samplers.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "images" / "samplers.png"))
    args = parser.parse_args(argv)
    command = command_line("samplers.py", sys.argv[1:] if argv is None else argv)
    pipeline = Pipeline.load(args.model)
    if pipeline.family != "diffusion":
        sys.exit(f"bench/samplers.py: {args.model} is a {pipeline.family} model, not diffusion")
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            report = evaluate_shapes(pipeline, prompts=args.prompts, seeds=args.seeds, steps=steps, sampler=sampler)
            prompts = ["a small red circle at the top left"] * 16
            drawing = peak_bytes(lambda: pipeline.draw(prompts, list(range(16)), steps=steps, sampler=sampler),
                                 pipeline.device)
            rows.append(dict(sampler=sampler, steps=steps, seen=report["seen"], heldout=report["heldout"],
                             pair=report["pair"], seconds_per_image=report["seconds_per_image"],
                             draw_peak_bytes_batch16=drawing))
            print(json.dumps(rows[-1]), flush=True)
    model = Path(args.model).resolve()
    model = model.relative_to(ROOT).as_posix() if model.is_relative_to(ROOT) else str(model)
    weights = sum(t.numel() * t.element_size() for t in pipeline.model.state_dict().values())
    trained = json.loads((Path(args.model) / "config.json").read_text()).get("train", {})
    measured = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), command=command, model=model,
                    trained=dict(minutes=trained.get("minutes"), steps=trained.get("steps")),
                    prompts=args.prompts, seeds=args.seeds, weights_bytes=weights, rows=rows)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(measured, indent=2))
    plot(rows, Path(args.plot), f"{measured['machine']}, {args.prompts} prompts x {args.seeds} seeds")

    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    budget = f"{trained['minutes']:g} minutes" if trained.get("minutes") else f"{trained.get('steps')} steps"
    lines = [f"Measured {measured['date']} on {measured['machine']}. Command: `{command}`.", "",
             f"The default diffusion model trained for {budget} (`{model}`), drawn "
             f"with each sampler at each number of steps, guidance as saved; {args.prompts} canonical prompts of each "
             f"kind x {args.seeds} seed(s), the exact judge. *Drawing memory*: peak live tensors while drawing 16 "
             f"pictures at once, beside {weights / MiB:.1f} MiB of weights.", "",
             f"![accuracy and time against sampler steps]({os.path.relpath(args.plot, ROOT / 'docs')})", "",
             "| sampler | steps | seen single | held-out single | pair | s/picture | drawing memory, batch 16 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {pct(r['seen'])} | {pct(r['heldout'])} | {pct(r['pair'])} "
                     f"| {r['seconds_per_image']:.3f} | {r['draw_peak_bytes_batch16'] / MiB:.1f} MiB |")
    write_section("samplers", "Sampling: accuracy and time against sampler steps", "\n".join(lines))


if __name__ == "__main__":
    main()
