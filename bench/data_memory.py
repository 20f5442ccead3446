"""Training from a set larger than memory: peak RSS stays bounded while every picture is used.

Generates WebDataset shards of shapes pictures whose decoded size is about twice a memory cap you
set, then, in a fresh process each: (1) decodes them into dreamlet's cache, (2) reads one whole
epoch through the dataset's batches, (3) trains a tiny diffusion model for a few steps on it.
Each phase's peak RSS is recorded beside the cap in docs/benchmarks.md.

    .venv/bin/python bench/data_memory.py [--cap-mb 1024] [--size 128] [--steps 20]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16
sys.path.insert(0, str(ROOT / "src"))


def make_shards(folder: Path, count: int, size: int, per_shard: int = 5000) -> None:
    from PIL import Image
    from dreamlet.data.shapes import ShapesDataset
    shapes = ShapesDataset(size=size, seed=123)
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range((count + per_shard - 1) // per_shard):
        with tarfile.open(folder / f"shapes-{shard:04d}.tar", "w") as tar:
            for i in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
                image, caption = shapes[i]
                png = io.BytesIO()
                Image.fromarray(image).save(png, "PNG")
                for ext, data in (("png", png.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def phase(name: str, shards: str, size: int, steps: int, out: str) -> None:
    """One measured phase, run in its own process; prints a JSON line."""
    started = time.perf_counter()
    from dreamlet.data import load
    if name == "cache":
        data = load(shards, size=size, quiet=True)
        detail = dict(pictures=data.meta["count"], cache_gb=round((data.directory / "images.u8").stat().st_size / 1e9, 2))
    elif name == "epoch":
        data = load(shards, size=size, quiet=True)
        seen = 0
        for start in range(0, len(data), 256):
            images, _ = data.batch(start, min(256, len(data) - start))
            seen += len(images)
        detail = dict(pictures_read=seen)
    else:  # "train" from the cached set, or "baseline": the same training on shapes drawn on the fly
        import torch
        torch.set_num_threads(2)
        from dreamlet.training import TrainConfig, train
        data = shards if name == "train" else "shapes"
        train(TrainConfig(out=str(out), data=data, size=size, preset="tiny", steps=steps, batch_size=BATCH,
                          sample_every=0, checkpoint_every=0), quiet=True)
        detail = dict(steps=steps)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(phase=name, peak_rss_mb=round(peak_mb), seconds=round(seconds, 1), **detail)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cap-mb", type=int, default=1024, help="the memory cap the set is twice the size of")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_memory"))
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    work = Path(args.work)
    shards = work / "shards"
    env = os.environ | {"DREAMLET_CACHE": str(work / "cache")}
    if args.phase:
        return phase(args.phase, str(shards), args.size, args.steps, str(work / "run"))
    count = int(2 * args.cap_mb * 2 ** 20 / (args.size * args.size * 3))
    if not (shards / "done").is_file():
        print(f"writing {count:,} pictures of {args.size} px as WebDataset shards ...", flush=True)
        started = time.perf_counter()
        make_shards(shards, count, args.size)
        (shards / "done").write_text(str(count))
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for name in ("cache", "epoch", "train", "baseline"):
        if name in ("train", "baseline"):
            subprocess.run(["rm", "-rf", str(work / "run")])
        result = subprocess.run([sys.executable, __file__, "--phase", name, "--size", str(args.size), "--steps",
                                 str(args.steps), "--work", str(work)], env=env, capture_output=True, text=True)
        if result.returncode:
            sys.exit(result.stderr)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    decoded_gb = count * args.size * args.size * 3 / 2 ** 30
    from time_to_accuracy import machine  # bench/ is on the path when this file runs as a script
    command = f".venv/bin/python bench/data_memory.py --cap-mb {args.cap_mb} --size {args.size} --steps {args.steps}"
    lines = [f"Measured {date.today()} on {machine()}.", f"Command: `{command}`",
             f"Set: {count:,} shapes pictures at {args.size} px in WebDataset shards, {decoded_gb:.2f} GiB decoded "
             f"(cap {args.cap_mb} MiB). Each phase runs in a fresh process; peak RSS includes Python, NumPy and torch, "
             f"and the baseline row shows what the model and torch take with no cached data at all.", "",
             "| phase | what it does | seconds | peak RSS | under the cap |", "|---|---|---|---|---|"]
    what = {"cache": "decode every shard into the cache", "epoch": "read one whole epoch of batches",
            "train": f"train the tiny model for {args.steps} steps of {BATCH} from the cache",
            "baseline": "the same training on shapes drawn on the fly (no cache)"}
    for r in rows:
        lines.append(f"| {r['phase']} | {what[r['phase']]} | {r['seconds']} | {r['peak_rss_mb']} MiB | "
                     f"{'yes' if r['peak_rss_mb'] < args.cap_mb else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_docs:
        from docs_section import keep_results, write_section
        keep_results("data_memory", command, rows, pictures=count, size=args.size,
                     decoded_gib=decoded_gb, cap_mb=args.cap_mb)
        write_section("data_memory", "Training from a set larger than memory",
                      table + "\n\nRaw results: bench/results/data_memory.json.")


if __name__ == "__main__":
    main()
