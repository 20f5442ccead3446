"""Memory and speed of the super-resolution stage, for docs/imagen.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sr_memory.py [--out bench/results/sr_memory.json]

Measured on this machine's CPU: each SR preset's parameters, and the activations one training step
keeps for its backward pass (the tensors autograd saves, each storage counted once, parameters
excluded), in fp32 and under bf16 autocast, at batch 1 and 2: the difference is the cost of one
more picture. Also the CPU training speed of the 32 -> 64 stage and the time a 32 -> 64 cascade
takes per picture. From these it *estimates*, with no GPU at hand, what training the 64 -> 256
stage takes on one: 20 bytes a parameter (fp32 weights, gradients, two AdamW moments, EMA), the
activations times the batch, a CUDA context, and a margin for the allocator.
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
from dreamlet.models.diffusion import PRESETS as BASE_PRESETS  # noqa: E402
from dreamlet.models.diffusion import DiffusionConfig, TextToImageDiffusion  # noqa: E402
from dreamlet.models.diffusion.super_resolution import PRESETS, SuperResolutionConfig, SuperResolutionDiffusion  # noqa: E402

GIB = 2 ** 30
STATE_BYTES = 20        # per parameter: fp32 weight 4 + gradient 4 + AdamW moments 8 + EMA copy 4
CONTEXT_GIB = 0.75      # CUDA context and library workspaces: an assumption, not measured here
MARGIN = 0.9            # share of the card the allocator can really use (fragmentation)


def sr_model(preset: str, size: int, low: int) -> SuperResolutionDiffusion:
    config = updated(SuperResolutionConfig(), PRESETS[preset] | {"image_size": size, "low_size": low})
    config = updated(config, {"text": {"vocab_size": 512}})
    torch.manual_seed(0)
    return SuperResolutionDiffusion(config)


def saved_bytes(model, size: int, batch: int, bf16: bool) -> int:
    """Bytes autograd keeps from one training forward pass for the backward pass."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    images, ids = torch.rand(batch, 3, size, size) * 2 - 1, torch.randint(4, 500, (batch, 24))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        model.loss(images, ids, ids[:1], torch.Generator().manual_seed(0))
    return sum(storages.values())


def memory_rows() -> list[dict]:
    rows = []
    for preset, size, low in (("small", 64, 32), ("base", 64, 16), ("base", 128, 32), ("base", 256, 64)):
        model = sr_model(preset, size, low)
        row = dict(preset=preset, size=size, low_size=low, parameters=sum(p.numel() for p in model.parameters()))
        for name, bf16 in (("fp32", False), ("bf16", True)):
            one, two = saved_bytes(model, size, 1, bf16), saved_bytes(model, size, 2, bf16)
            row[f"activations_per_picture_{name}_mib"] = round((two - one) / 2 ** 20, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def estimate_12gb(row: dict, card_gib: float = 12.0) -> dict:
    state_gib = row["parameters"] * STATE_BYTES / GIB
    free_gib = card_gib * MARGIN - CONTEXT_GIB - state_gib
    out = {"state_gib": round(state_gib, 2), "free_for_activations_gib": round(free_gib, 2)}
    for name in ("fp32", "bf16"):
        per_picture = row[f"activations_per_picture_{name}_mib"] / 1024
        out[f"max_batch_{name}"] = max(0, int(free_gib // per_picture))
        out[f"total_gib_at_batch_8_{name}"] = round(CONTEXT_GIB + state_gib + 8 * per_picture, 2)
    return out


def cpu_speed() -> dict:
    """Training images/s of the small 32 -> 64 stage (batch 32, AdamW), and seconds per cascade picture
    (small base at 32 px + small SR stage at 64 px, 20 steps each, their default guidance, batch 8)."""
    model = sr_model("small", 64, 32)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images, ids = torch.rand(32, 3, 64, 64) * 2 - 1, torch.randint(4, 500, (32, 24))
    for i in range(7):
        if i == 2:
            started = time.perf_counter()
        loss = model.loss(images, ids, ids[:1], torch.Generator().manual_seed(i))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_rate = 5 * 32 / (time.perf_counter() - started)
    base = TextToImageDiffusion(updated(DiffusionConfig(), {"text": {"vocab_size": 512}})).eval()
    model.eval()
    ids = torch.randint(4, 500, (8, 24))
    started = time.perf_counter()
    low = base.generate(ids, ids[:1], torch.randn(8, 3, 32, 32))
    base_seconds = time.perf_counter() - started
    model.generate(ids, ids[:1], torch.randn(8, 3, 64, 64), low=low, low_noise=torch.randn_like(low))
    total = time.perf_counter() - started
    return {"sr_train_images_per_s": round(train_rate, 1), "base_seconds_per_picture": round(base_seconds / 8, 3),
            "cascade_seconds_per_picture": round(total / 8, 3), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/sr_memory.json")
    args = parser.parse_args()
    rows = memory_rows()
    estimate = estimate_12gb(next(r for r in rows if r["size"] == 256))
    speed = cpu_speed()
    result = {"rows": rows, "estimate_64_to_256_on_12_gib": estimate, "cpu": speed,
              "assumptions": {"state_bytes_per_parameter": STATE_BYTES, "cuda_context_gib": CONTEXT_GIB,
                              "usable_share": MARGIN}}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
