"""The model families side by side on shapes: each trained for the same time on this machine with its
own defaults, then judged on the same canonical prompts and seeds by the same judge, with training
images/s and sampling seconds per picture. Writes the table into docs/benchmarks.md.

    .venv/bin/python bench/families.py [--families diffusion gan gan-hash] [--minutes 15] [--reuse]

Runs go to runs/bench/families/FAMILY; `--reuse` judges a finished run again instead of retraining it.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import write_section  # noqa: E402
from time_to_accuracy import machine  # noqa: E402

from dreamlet.evaluation import evaluate_shapes  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402

WHAT = {"diffusion": "text-conditional diffusion (DiT, CFG)", "gan": "text-conditional GAN (projection D, matching-aware)",
        "gan-hash": "the seed's DCGAN, prompt hashed into the noise", "dalle": "DALL-E: image tokens + transformer"}


def run_family(family: str, minutes: float, out: Path, prompts: int, seeds: int, reuse: bool) -> dict:
    run = out / family
    if not (reuse and (run / "model").is_dir()):
        shutil.rmtree(run, ignore_errors=True)
        train(TrainConfig(model=family, out=str(run), minutes=minutes), quiet=True)
    log = list(csv.DictReader(open(run / "train_log.csv")))
    batch = json.loads((run / "model" / "config.json").read_text())["train"]["batch_size"]
    steps, seconds = int(log[-1]["step"]), float(log[-1]["elapsed_s"])
    report = evaluate_shapes(run / "model", prompts=prompts, seeds=seeds)
    return dict(family=family, minutes=seconds / 60, steps=steps, batch=batch, images_per_s=steps * batch / seconds,
                seen=report["seen"], heldout=report["heldout"], pair=report["pair"], attributes=report["attributes"],
                seconds_per_image=report["seconds_per_image"], sampler=report["sampler"], sample_steps=report["steps"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="+", default=["diffusion", "gan", "gan-hash"])
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "families"))
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for family in args.families:
        rows.append(run_family(family, args.minutes, out, args.prompts, args.seeds, args.reuse))
        print(json.dumps(rows[-1]), flush=True)
    (out / "families.json").write_text(json.dumps(rows, indent=2))

    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
             f"Command: `{' '.join(['.venv/bin/python', 'bench/families.py'] + [shlex.quote(a) for a in sys.argv[1:]])}`",
             f"Each family trained {args.minutes:g} minutes with its defaults, then {args.prompts} canonical prompts of "
             f"each kind x {args.seeds} seeds, the same for every family, judged by the exact shapes judge.", "",
             "| family | steps x batch | train img/s | seen single | held-out single | pair | colour | shape | size "
             "| position | relation | drawing | s/picture |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["attributes"]
        drawing = r["sampler"] if r["sample_steps"] == 1 else f"{r['sample_steps']} {r['sampler']} steps"
        lines.append(f"| {r['family']}: {WHAT.get(r['family'], '')} | {r['steps']} x {r['batch']} | {r['images_per_s']:.0f} "
                     f"| {pct(r['seen'])} | {pct(r['heldout'])} | {pct(r['pair'])} | {pct(a['color'])} | {pct(a['shape'])} "
                     f"| {pct(a['size'])} | {pct(a['position'])} | {pct(a['relation'])} | {drawing} "
                     f"| {r['seconds_per_image']:.4f} |")
    write_section("families", "The families side by side (shapes, 32 px, same budget, same judge)", "\n".join(lines))


if __name__ == "__main__":
    main()
