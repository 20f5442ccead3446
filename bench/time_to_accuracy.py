"""Time to accuracy on shapes: train the default model for 2, 5 and 10 minutes (one full run per
budget, since the learning-rate schedule follows the budget), judge each on the evaluation prompts (and
on the validation prompts, which designs are chosen on), as the model draws by default (the best of 4 by
its own judgement) and each picture alone (`rerank` 1), and record training images/s and sampling
seconds per picture in docs/benchmarks.md; the raw results go to bench/results/time_to_accuracy.json.

    .venv/bin/python bench/time_to_accuracy.py [--budgets 2 5 10] [--prompts 64] [--out runs/bench]
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import command_line, keep_results, machine  # noqa: E402,F401  (machine is re-exported: other scripts import it)
from dreamlet.evaluation import evaluate_shapes  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402

START, END = "<!-- time_to_accuracy:start -->", "<!-- time_to_accuracy:end -->"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    rows = []
    for minutes in args.budgets:
        run = Path(args.out) / f"{minutes:g}min"
        if (run / "checkpoint").exists():
            import shutil
            shutil.rmtree(run)
        config = TrainConfig(out=str(run), minutes=minutes).resolved()
        model_dir = train(config, quiet=True)
        log = list(csv.DictReader(open(run / "train_log.csv")))
        steps = int(log[-1]["step"])
        images_per_s = steps * config.batch_size / float(log[-1]["elapsed_s"])
        report = evaluate_shapes(model_dir, prompts=args.prompts, seeds=args.seeds)
        validation = evaluate_shapes(model_dir, prompts=args.prompts, seeds=args.seeds, prompt_set="validation")
        alone = evaluate_shapes(model_dir, prompts=args.prompts, seeds=args.seeds, rerank=1)
        rows.append(dict(minutes=minutes, steps=steps, images_per_s=images_per_s, rerank=report["rerank"],
                         seen=report["seen"], heldout=report["heldout"], pair=report["pair"],
                         validation={k: validation[k] for k in ("seen", "heldout", "pair")},
                         alone={k: alone[k] for k in ("seen", "heldout", "pair", "seconds_per_image")},
                         attributes=report["attributes"], seconds_per_image=report["seconds_per_image"],
                         sampler=report["sampler"], sample_steps=report["steps"], guidance=report["guidance"]))
        print(json.dumps(rows[-1]))
    command = command_line("time_to_accuracy.py", sys.argv[1:])
    keep_results("time_to_accuracy", command, rows, prompt_set="evaluation (validation in each row's 'validation')")
    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    lines = [START, "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
             f"Command: `{command}`",
             f"Judge: {args.prompts} prompts of each kind x {args.seeds} seeds, "
             f"{rows[0]['sample_steps']} {rows[0]['sampler']} steps, guidance {rows[0]['guidance']}, the best of "
             f"{rows[0]['rerank']} candidates by the model's own judgement (the default).", "",
             "Raw results: bench/results/time_to_accuracy.json. The last two columns: the same model drawing each "
             "picture alone (`--rerank 1`), and as by default on the validation prompts.", "",
             "| budget | steps | train img/s | seen single | held-out single | pair | colour | shape | size | position | "
             "relation | sampling s/picture | alone: seen / held-out / pair (s/picture) | validation seen / "
             "held-out / pair |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["attributes"]
        lines.append(f"| {r['minutes']:g} min | {r['steps']} | {r['images_per_s']:.0f} | {pct(r['seen'])} | "
                     f"{pct(r['heldout'])} | {pct(r['pair'])} | {pct(a['color'])} | {pct(a['shape'])} | "
                     f"{pct(a['size'])} | {pct(a['position'])} | {pct(a['relation'])} | {r['seconds_per_image']:.3f} | "
                     + " / ".join(pct(r["alone"][k]) for k in ("seen", "heldout", "pair"))
                     + f" ({r['alone']['seconds_per_image']:.3f}) | "
                     + " / ".join(pct(r["validation"][k]) for k in ("seen", "heldout", "pair")) + " |")
    lines += ["", END]
    doc = Path(args.doc)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    block = "\n".join(lines)
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += "\n## Time to accuracy (shapes, default model)\n\n" + block + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
