"""Can a GAN's generator draw a pair scene when it is told the layout? (docs/gan.md, thirteenth and twentieth rounds)

    .venv/bin/python bench/gan_pair_redraw.py runs/gan/model [--scenes 256] [--grid out.png]

Renders random pair scenes of the training distribution with their canonical captions, and has the generator
draw each from its caption and (1) the noise code its encoder reads from the real picture (the mean: the layout
handed over), (2) the mean of the caption's prior (as drawing reads it, without the randomness). Each picture is
judged as a pair prompt by the shapes judge. Prints one JSON line: for each noise, the share of pictures right,
with both colours right, both shapes right, and the two asked objects as the two largest. A generator that reads
the caption only as one pooled vector fails (1) too: it cannot give two objects each its own colour and shape.
`--grid` saves the first 16 scenes, real above and redrawn from their codes below.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamlet.data.shapes import canonical_caption, parse_prompt, random_pair, render  # noqa: E402
from dreamlet.images import to_tensor, to_uint8  # noqa: E402
from dreamlet.judge import judge  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--grid", help="save real scenes above their redrawings (16 of them) here")
    args = parser.parse_args()
    pipeline = Pipeline.load(args.model, device="cpu")
    model = pipeline.model.eval()
    if pipeline.family != "gan" or not hasattr(model, "encoder"):
        sys.exit("error: this needs a gan model with the noise code (code_kl > 0)")
    rng = np.random.default_rng(args.seed)
    scenes = [random_pair(rng) for _ in range(args.scenes)]
    captions = [canonical_caption(s) for s in scenes]
    real = to_tensor(np.stack([render(s, pipeline.image_size) for s in scenes]))
    prompts = [parse_prompt(c) for c in captions]
    text, words = model.caption_and_words(pipeline.tokenizer(captions))
    codes = {"own_code": model.encoder(real)[0], "prior_mean": model.prior(text)[0]}
    result = {"model": args.model, "scenes": args.scenes}
    for name, z in codes.items():
        pictures = to_uint8(model.generator(z, text, words))
        scores = [judge(picture, prompt) for picture, prompt in zip(pictures, prompts)]
        result[name] = {key: float(np.mean([s[key] for s in scores]))
                        for key in ("correct", "color", "shape", "both_objects")}
        if name == "own_code" and args.grid:
            from PIL import Image
            rows = [np.concatenate(list(to_uint8(real[:16])), 1), np.concatenate(list(pictures[:16]), 1)]
            grid = np.concatenate(rows)
            Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.grid)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
