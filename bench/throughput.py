"""Training images/s of model designs on this machine (the step budget a time budget buys).

    .venv/bin/python bench/throughput.py '{"dit": {"width": 128}}' '{"dit": {"depth": 6}}' [--batch 32]
    .venv/bin/python bench/throughput.py '{}' --steps 40 --optimizer muon    # the optimizer's cost
    .venv/bin/python bench/throughput.py '{}' --steps 40 --optimizer muon-torch    # torch.optim.Muon itself

Prints one JSON line per design: parameters, images/s, and the steps 10 minutes buy at that batch.
With OMP_NUM_THREADS=1 it measures the one-thread speed that bench/sweep.py's side-by-side runs get.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamlet.config import updated  # noqa: E402
from dreamlet.data.shapes import ShapesDataset  # noqa: E402
from dreamlet.images import to_tensor  # noqa: E402
from dreamlet.models.diffusion import DiffusionConfig, TextToImageDiffusion  # noqa: E402
from dreamlet.optimizer import OPTIMIZERS, make_optimizer  # noqa: E402
from dreamlet.text.tokenizer import CaptionTokenizer  # noqa: E402


def images_per_second(overrides: dict, batch: int, steps: int = 8, optimizer: str = "adamw") -> tuple[float, float]:
    dataset = ShapesDataset(32, 0)
    tokenizer = CaptionTokenizer.train(dataset.captions(2000), max_length=24)
    config = updated(DiffusionConfig(), {"text": {"vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id}})
    model = TextToImageDiffusion(updated(config, overrides))
    optimizer = make_optimizer(optimizer, [{"params": list(model.parameters())}], model, 1e-3, (0.9, 0.99))
    empty = tokenizer([""])
    for i in range(steps + 2):
        if i == 2:
            started = time.perf_counter()
        images, captions = dataset.batch(i * batch, batch)
        loss = model.loss(to_tensor(images), tokenizer(captions), empty)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rate = steps * batch / (time.perf_counter() - started)
    return sum(p.numel() for p in model.parameters()) / 1e6, rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("designs", nargs="*", default=["{}"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per design")
    parser.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS + ("muon-torch",))
    args = parser.parse_args()
    if args.optimizer == "muon-torch":  # torch's own Muon (bfloat16 Newton-Schulz), to see what dreamlet's saves
        import dreamlet.optimizer
        dreamlet.optimizer.Muon = lambda params, lr: torch.optim.Muon(params, lr=lr, adjust_lr_fn="match_rms_adamw")
    for design in args.designs:
        params, rate = images_per_second(json.loads(design), args.batch, args.steps, args.optimizer.split("-")[0])
        print(json.dumps(dict(design=json.loads(design), optimizer=args.optimizer, params_m=round(params, 2),
                              images_per_s=round(rate, 1),
                              steps_in_10_min=int(600 * rate / args.batch))), flush=True)


if __name__ == "__main__":
    main()
