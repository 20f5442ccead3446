"""One design experiment on shapes: train with overrides for a time budget, judge, append a JSON line.

    .venv/bin/python bench/ablate.py --name wider --minutes 10 --model '{"dit": {"width": 192}}' \
        --train '{"lr": 1e-3}'

Results go to runs/ablations.jsonl; docs/benchmarks.md summarises what each change did.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dreamlet.evaluation import evaluate_shapes  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--model", default="{}", help="JSON overrides of the diffusion config")
    parser.add_argument("--train", default="{}", help="JSON overrides of TrainConfig")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--guidance", type=float, nargs="*", default=[None])
    args = parser.parse_args()
    run = ROOT / "runs" / "ablations" / args.name
    shutil.rmtree(run, ignore_errors=True)
    config = TrainConfig(out=str(run), minutes=args.minutes, sample_every=0, checkpoint_every=0,
                         settings=json.loads(args.model), **json.loads(args.train)).resolved()
    model_dir = train(config, quiet=True)
    log = list(csv.DictReader(open(run / "train_log.csv")))
    steps = int(log[-1]["step"])
    for guidance in args.guidance:
        report = evaluate_shapes(model_dir, prompts=args.prompts, seeds=2, guidance=guidance)
        row = dict(name=args.name, minutes=args.minutes, model=json.loads(args.model), train=json.loads(args.train),
                   steps=steps, images_per_s=steps * config.batch_size / float(log[-1]["elapsed_s"]),
                   final_loss=float(log[-1]["loss"]), guidance=report["guidance"],
                   seen=report["seen"], heldout=report["heldout"], pair=report["pair"],
                   attributes=report["attributes"], seconds_per_image=report["seconds_per_image"])
        print(json.dumps(row), flush=True)
        with open(ROOT / "runs" / "ablations.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
