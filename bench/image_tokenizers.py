"""The image tokenizer kinds on shapes (the table in docs/dalle.md): each kind trained on one thread
for its budget, two runs side by side, then judged as `dreamlet eval` judges a tokenizer (192
held-out pictures, a third of them pairs): reconstruction PSNR, codes in use, perplexity.

    .venv/bin/python bench/image_tokenizers.py [--out runs/bench/tokenizers] [--scale 1.0]

`--scale` multiplies every budget (a quick look). Raw results: bench/results/image_tokenizers.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import command_line, keep_results, write_section  # noqa: E402
from sweep import side_by_side  # noqa: E402

# row name -> (--set values, minutes of training on one thread)
KINDS = {
    "`vq`": ({}, 5),
    "`vqgan`": ({"kind": "vqgan"}, 3),
    "`dvae` (straight-through)": ({"kind": "dvae"}, 2.5),
    "`dvae` (pure relaxation, as DALL-E)": ({"kind": "dvae", "straight_through": False}, 4),
}


def train_command(settings: dict, minutes: float, out: Path) -> list[str]:
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    return [sys.executable, "-m", "dreamlet", "train", "--model", "vqvae", "--data", "shapes", "--minutes",
            f"{minutes:g}", "--out", str(out), "--sample-every", "0", *sets]


def judge(name: str, run: Path, minutes: float) -> dict:
    from dreamlet.evaluation import evaluate_tokenizer
    log = list(csv.DictReader(open(run / "train_log.csv")))
    steps, seconds = int(log[-1]["step"]), float(log[-1]["elapsed_s"])
    report = evaluate_tokenizer(run / "model", "shapes", count=192)
    return dict(name=name, minutes=minutes, steps=steps, steps_per_s=steps / seconds,
                **{k: report[k] for k in ("psnr", "usage", "codes_used", "codebook_size", "perplexity", "pictures")})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "tokenizers"))
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {name: (out / f"run{i}", minutes * args.scale) for i, (name, (_, minutes)) in enumerate(KINDS.items())}
    for run, _ in runs.values():
        shutil.rmtree(run, ignore_errors=True)  # a fresh run each time
    jobs = [(name, train_command(KINDS[name][0], minutes, run), out / f"{run.name}.log")
            for name, (run, minutes) in runs.items()]
    for name, returncode in side_by_side(jobs, 2, env=os.environ | {"PYTHONPATH": str(ROOT / "src")}):
        if returncode:
            raise SystemExit(f"the {name} run failed: see {runs[name][0]}.log")
    rows = [judge(name, *runs[name]) for name in KINDS]
    measured = keep_results("image_tokenizers", command_line("image_tokenizers.py", sys.argv[1:]), rows,
                            threads="1 thread per run, two runs side by side")
    lines = [f"Measured {measured['date']} on {measured['machine']}, commit {measured['commit']}. Command: "
             f"`{measured['command']}`; raw results in bench/results/image_tokenizers.json.", "",
             "| kind | training (1 thread) | steps | steps/s | held-out PSNR | codes in use | perplexity |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['minutes']:g} min | {r['steps']:,} | {r['steps_per_s']:.1f} "
                     f"| {r['psnr']:.1f} dB | {100 * r['usage']:.1f} % ({r['codes_used']} of {r['codebook_size']}) "
                     f"| {r['perplexity']:.1f} |")
    write_section("tokenizers", "Image tokenizers", "\n".join(lines), docs=ROOT / "docs" / "dalle.md")


if __name__ == "__main__":
    main()
