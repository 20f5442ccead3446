"""GPU figures (issue 8 and 10): run where there is a CUDA device; writes JSON that
bench/gpu_report.py turns into docs/benchmarks.md's GPU section.

    python bench/gpu.py --out DIR [--parts throughput cascade families quality] [--quality-minutes 4]

- throughput: the base diffusion preset at 64 px (the GPU default), bf16 autocast: the model's training
  step alone (fwd + bwd + AdamW on resident tensors) and the whole `dreamlet.train` loop (shapes drawn
  on the CPU on the fly, tokenizer, EMA, logging), in images/s; model FLOPs per picture counted by
  torch's FlopCounterMode, and the model FLOPs utilisation against the card's dense bf16 peak.
- cascade: the 64 -> 256 super-resolution stage (base preset) trained through `dreamlet.train` with
  `max_memory=12` while this process may use no more than 12 GiB of the card
  (torch.cuda.set_per_process_memory_fraction): it fits if it trains; the allocator's peaks are
  recorded. Then the whole cascade (base 64 px + SR 256 px) draws a batch: peak memory and s/picture.
- families: every family trains 40 steps on CUDA and draws pictures (finite, right shape).
- quality: the default diffusion model at 32 px trained for --quality-minutes on the GPU, judged.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dreamlet.config import updated  # noqa: E402
from dreamlet.data.shapes import ShapesDataset  # noqa: E402
from dreamlet.images import to_tensor  # noqa: E402
from dreamlet.models.diffusion import DiffusionConfig, TextToImageDiffusion  # noqa: E402
from dreamlet.models.diffusion.model import PRESETS  # noqa: E402
from dreamlet.text.tokenizer import CaptionTokenizer  # noqa: E402

GiB = 2 ** 30
# dense bf16 tensor-core peaks (no sparsity), from NVIDIA's data sheets
PEAK_BF16 = {"H100 80GB HBM3": 989e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def timed(fn, repeats: int) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def throughput(results: dict, out: Path, preset: str = "small") -> None:
    from torch.utils.flop_counter import FlopCounterMode
    device = torch.device("cuda")
    dataset = ShapesDataset(64, 0)
    tokenizer = CaptionTokenizer.train(dataset.captions(2000), max_length=DiffusionConfig().text.max_length)
    config = updated(updated(DiffusionConfig(), PRESETS[preset]),
                     {"image_size": 64,
                      "text": {"vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id}})
    torch.manual_seed(0)
    model = TextToImageDiffusion(config).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4, fused=True)
    empty = tokenizer([""]).to(device)
    rows = []
    for batch in (64, 128, 256):
        images, captions = dataset.batch(0, batch)
        images, ids = to_tensor(images).to(device), tokenizer(captions).to(device)
        generator = torch.Generator().manual_seed(0)  # as the training loop: noise drawn on the CPU

        def step():
            with torch.autocast("cuda", torch.bfloat16):
                loss = model.loss(images, ids, empty, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(3):
            step()
        with FlopCounterMode(display=False) as counter:
            with torch.autocast("cuda", torch.bfloat16):
                loss = model.loss(images, ids, empty, generator)
            loss.backward()
        flops = counter.get_total_flops()
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(step, 20)
        peak = peak_flops(torch.cuda.get_device_name())
        rows.append(dict(batch=batch, images_per_s=round(batch / seconds, 1), step_ms=round(1000 * seconds, 2),
                         gflops_per_picture=round(flops / batch / 1e9, 3),
                         mfu=round(flops / seconds / peak, 4) if peak else None,
                         peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GiB, 2)))
        print(json.dumps(rows[-1]), flush=True)
    results["throughput"] = dict(model=f"diffusion {preset} preset, 64 px", parameters=parameters, rows=rows)

    # the whole training loop: data drawn on the CPU, tokenizer, EMA, logging, checkpoint at the end
    from dreamlet.training import TrainConfig, train
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train(TrainConfig(out=tmp, size=64, steps=150, batch_size=128, sample_every=0, log_every=10, preset=preset),
              quiet=True)
        wall = time.perf_counter() - started
        import csv
        log = list(csv.DictReader(open(Path(tmp) / "train_log.csv")))
        results["throughput"]["train_loop"] = dict(batch=128, steps=150, wall_s=round(wall, 1),
                                                   images_per_s_last=float(log[-1]["images_per_s"]),
                                                   preset=preset)
    # the data alone: how fast the CPU draws shapes at 64 px
    started = time.perf_counter()
    for i in range(10):
        dataset.batch(i * 128, 128)
    results["throughput"]["shapes_images_per_s_cpu"] = round(1280 / (time.perf_counter() - started), 1)
    print(json.dumps(results["throughput"]), flush=True)


def write_folder(root: Path, size: int, count: int) -> None:
    """A captioned folder of `size` px pictures: the shapes set's 128 px renders, upscaled (shapes stops at 128)."""
    from PIL import Image
    dataset = ShapesDataset(128, 0)
    root.mkdir(parents=True)
    images, captions = dataset.batch(0, count)
    rows = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        picture = Image.fromarray(image) if not isinstance(image, Image.Image) else image
        picture.resize((size, size), Image.BICUBIC).save(root / f"{i:04d}.png")
        rows.append(json.dumps({"file_name": f"{i:04d}.png", "text": caption}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def cascade(results: dict, out: Path) -> None:
    import numpy as np

    from dreamlet.pipeline import Pipeline
    from dreamlet.training import TrainConfig, train
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(12 * GiB / total)  # this process may use 12 GiB of the card
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pictures256"
        write_folder(folder, 256, 512)
        base_dir = train(TrainConfig(out=f"{tmp}/base", data=str(folder), size=64, steps=30, sample_every=0,
                                     preset="base"), quiet=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        sr_dir = train(TrainConfig(model="diffusion-sr", out=f"{tmp}/sr", data=str(folder), size=256, steps=30,
                                   preset="base", max_memory=12, sample_every=0, log_every=5,
                                   settings={"base": str(base_dir)}), quiet=False)
        wall = time.perf_counter() - started
        import csv
        log = list(csv.DictReader(open(Path(tmp) / "sr" / "train_log.csv")))
        saved = json.loads((sr_dir / "config.json").read_text())
        row = dict(cap_gib=12, batch=saved["train"]["batch_size"], accumulate=saved["train"]["accumulate"],
                   checkpointing=saved["train"]["checkpointing"],
                   parameters=sum(t.numel() for t in Pipeline.load(sr_dir).model.parameters()),
                   peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GiB, 2),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GiB, 2),
                   images_per_s=float(log[-1]["images_per_s"]), wall_s=round(wall, 1))
        print(json.dumps(row), flush=True)
        # the same stage without the planner: batch 32 in one micro-batch, no checkpointing, no cap
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        train(TrainConfig(model="diffusion-sr", out=f"{tmp}/sr_plain", data=str(folder), size=256, steps=6,
                          preset="base", sample_every=0, settings={"base": str(base_dir)}), quiet=True)
        row["unplanned_batch32_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
        row["unplanned_batch32_peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 2)
        # drawing: the whole cascade, 8 pictures
        torch.cuda.empty_cache()
        pipeline = Pipeline.load(sr_dir)
        prompts = ["a small red circle at the top left"] * 8
        pipeline.draw(prompts[:2], [0, 1])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        pictures = pipeline.draw(prompts, list(range(8)))
        torch.cuda.synchronize()
        row["cascade_draw"] = dict(pictures=8, seconds_per_picture=round((time.perf_counter() - started) / 8, 4),
                                   peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GiB, 2),
                                   shape=list(np.asarray(pictures[0]).shape))
        results["cascade"] = row
        print(json.dumps(row), flush=True)


def families(results: dict, out: Path) -> None:
    import numpy as np

    from dreamlet.models import get_family
    from dreamlet.pipeline import Pipeline
    from dreamlet.training import TrainConfig, train
    rows = {}
    for family in ("diffusion", "gan", "gan-hash", "vqvae", "dalle", "clip"):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                model_dir = train(TrainConfig(model=family, out=tmp, steps=40, sample_every=0, log_every=10), quiet=True)
                row = dict(train_s=round(time.perf_counter() - started, 1))
                pipeline = Pipeline.load(model_dir)
                row["device"] = str(pipeline.device)
                if get_family(pipeline.family).can_draw(pipeline.model.config):
                    pictures = pipeline.draw(["a large blue square in the middle", "a small red circle at the top left"], [0, 1])
                    arrays = [np.asarray(p) for p in pictures]
                    row.update(pictures=len(arrays), shape=list(arrays[0].shape),
                               finite=bool(all(np.isfinite(a.astype(float)).all() for a in arrays)))
                rows[family] = row
        except Exception as error:  # noqa: BLE001 - a report, not a product path
            rows[family] = dict(error=f"{type(error).__name__}: {error}")
        print(family, json.dumps(rows[family]), flush=True)
    results["families"] = rows


def quality(results: dict, out: Path, minutes: float) -> None:
    import csv

    from dreamlet.evaluation import evaluate_shapes
    from dreamlet.training import TrainConfig, train
    rows = []
    for preset in ("small",):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = train(TrainConfig(out=tmp, minutes=minutes, preset=preset, sample_every=0), quiet=True)
            log = list(csv.DictReader(open(Path(tmp) / "train_log.csv")))
            report = evaluate_shapes(model_dir, prompts=64, seeds=2)
            config = json.loads((model_dir / "config.json").read_text())
            rows.append(dict(preset=preset, minutes=minutes, steps=int(log[-1]["step"]),
                             batch=config["train"]["batch_size"], images_per_s=float(log[-1]["images_per_s"]),
                             seen=report["seen"], heldout=report["heldout"], pair=report["pair"],
                             attributes=report["attributes"], seconds_per_image=report["seconds_per_image"]))
            print(json.dumps(rows[-1]), flush=True)
    results["quality"] = rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--parts", nargs="+", default=["throughput", "cascade", "families", "quality"])
    parser.add_argument("--quality-minutes", type=float, default=4)
    parser.add_argument("--preset", default="small", help="the diffusion preset the throughput part measures")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(date=time.strftime("%Y-%m-%d"), gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                   cuda=torch.version.cuda, command="python bench/gpu.py " + " ".join(sys.argv[1:]))
    print(json.dumps(results), flush=True)
    for part in args.parts:
        started = time.perf_counter()
        try:
            if part == "quality":
                quality(results, out, args.quality_minutes)
            elif part == "throughput":
                throughput(results, out, args.preset)
            else:
                globals()[part](results, out)
        except Exception as error:  # noqa: BLE001 - keep the other parts' figures
            traceback.print_exc()
            results[part] = dict(error=f"{type(error).__name__}: {error}")
        results.setdefault("seconds", {})[part] = round(time.perf_counter() - started, 1)
        (out / "gpu.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
