"""What a diffusion model's caption preview holds for pair prompts, above what it draws from it.

    .venv/bin/python bench/preview_picture.py runs/demo/model [--out docs/images/pair_preview_copies.png]

Top row: the preview of each prompt (the clean estimate at pure noise: the mean picture over every layout the
caption allows). Below: the pictures drawn with two seeds. docs/benchmarks.md (eighth round) shows it: where
the preview spreads an object over several cells, the model often draws it in two of them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamlet.pipeline import Pipeline  # noqa: E402

PROMPTS = ["a green square to the right of a blue circle", "a red circle to the left of a blue square",
           "a yellow triangle above a purple diamond", "a cyan diamond below a green square"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images" /
                                             "pair_preview_copies.png"))
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    pipeline = Pipeline.load(args.model)
    with torch.no_grad():
        preview = pipeline.model.condition(pipeline.tokenizer(PROMPTS).to(pipeline.device)).preview
    as_pixels = lambda x: ((x.clamp(-1, 1).permute(1, 2, 0).float().cpu().numpy() + 1) * 127.5).astype(np.uint8)  # noqa: E731
    rows = [np.concatenate([as_pixels(x) for x in preview], 1)]
    for seed in range(args.seeds):
        rows.append(np.concatenate([np.asarray(image)[..., :3] for image in pipeline.draw(PROMPTS, [seed] * len(PROMPTS))], 1))
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
