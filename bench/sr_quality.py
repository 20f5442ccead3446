"""How well a trained cascade's super-resolution stage upsamples, for docs/imagen.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sr_quality.py runs/sr/model [--pictures 96] [--prompts 32]

On held-out real pictures of the data the stage trained on: PSNR of the SR stage's 2x (or more)
enlargement of their box-filtered low-res versions against the real picture, beside bilinear and
nearest-neighbour upsampling of the same low-res pictures. Then, on shapes, the judge on the same
prompts and seeds drawn by the base stage alone and by the whole cascade: does upsampling keep what
the base stage drew?
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamlet.evaluation import evaluate_shapes, heldout_set  # noqa: E402
from dreamlet.images import to_tensor, to_uint8  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255 ** 2
    return float(10 * np.log10(1 / max(mse, 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--pictures", type=int, default=96)
    parser.add_argument("--prompts", type=int, default=32, help="shapes judge: prompts of each kind")
    parser.add_argument("--out", default="bench/results/sr_quality.json")
    args = parser.parse_args()
    pipe = Pipeline.load(args.model)
    size, low_size = pipe.image_size, pipe.model.config.low_size
    real, captions, _ = heldout_set(pipe.meta.get("data", "shapes"), size, args.pictures)
    low = to_tensor(real)
    low = to_uint8(F.avg_pool2d(low, size // low_size))                     # what the stage learned to upsample
    seeds = list(range(len(real)))
    result = {"model": args.model, "size": size, "low_size": low_size, "pictures": len(real),
              "psnr_sr": psnr(pipe.upsample(low, captions, seeds), real)}
    for mode in ("bilinear", "nearest"):
        up = F.interpolate(to_tensor(low), size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
        result[f"psnr_{mode}"] = psnr(to_uint8(up), real)
    if pipe.base is not None and pipe.meta.get("data") == "shapes":
        for stage_size in pipe.sizes:
            report = evaluate_shapes(pipe.at_size(stage_size), prompts=args.prompts, seeds=1)
            result[f"judge_{stage_size}px"] = {k: report[k] for k in ("seen", "heldout", "pair", "attributes",
                                                                        "seconds_per_image")}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
