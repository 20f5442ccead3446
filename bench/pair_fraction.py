"""Does training on more pair scenes teach relations sooner? The default diffusion model trained for
10 minutes on shapes whose share of pair scenes is PAIR_FRACTION (the set's default is 0.4), judged
on 64 prompts of each kind x 2 seeds. Prints one JSON line; docs/benchmarks.md records the result.

    .venv/bin/python bench/pair_fraction.py 0.7 [--minutes 10]
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import dreamlet.data.shapes as shapes  # noqa: E402
from dreamlet.evaluation import evaluate_shapes  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pair_fraction", type=float)
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    original = shapes.ShapesDataset.__init__

    def init(self, *a, **k):  # every shapes set this process builds gets the share asked for
        k.setdefault("pair_fraction", args.pair_fraction)
        original(self, *a, **k)

    shapes.ShapesDataset.__init__ = init
    out = ROOT / "runs" / f"pairfrac{args.pair_fraction:g}"
    shutil.rmtree(out, ignore_errors=True)
    model = train(TrainConfig(out=str(out), minutes=args.minutes, sample_every=0), quiet=True)
    report = evaluate_shapes(model, prompts=64, seeds=2)
    print(json.dumps({k: report[k] for k in ("seen", "heldout", "pair", "attributes")}))


if __name__ == "__main__":
    main()
