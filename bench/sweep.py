"""Step-matched design experiments on shapes, run side by side, one thread each.

A time budget on a CPU is a fixed number of optimizer steps for a given design (measure it with
`bench/throughput.py`). Running each experiment for its step count, not for minutes, makes results
independent of what else the machine is doing, so two 1-thread experiments can share 2 cores
(together ~1.3x the images/s of one 2-thread run). On a GPU the same file runs many at once.
Training and sampling are fp32 everywhere.

    .venv/bin/python bench/sweep.py experiments.json --out runs/sweep [--parallel 2] [--results bench/results/X.json]

experiments.json is a list of {"name", "steps", "model": {...}, "train": {...},
"prompt_set": "validation" (the default: designs are chosen there) or "evaluation",
"data": {"pair_fraction": ..., "canonical_prob": ..., "pair_cells": "aligned" | "far"}, "guidance": [3, 5], "prompts": 32}.
Results: one JSON line per (experiment, guidance) in OUT/results.jsonl; with --results, the rows of these
experiments also go to that file with the date, machine, commit and command (the raw results a published
figure needs). docs/benchmarks.md records what each experiment showed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shapes_with(options: dict) -> None:
    """Every shapes set this process builds from now on gets `options` (pair_fraction, canonical_prob),
    unless its caller passes them itself."""
    from dreamlet.data import shapes
    init = shapes.ShapesDataset.__init__
    shapes.ShapesDataset.__init__ = lambda self, size=32, seed=0, **kw: init(self, size, seed, **(options | kw))


def run_one(spec: dict, out: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    from dreamlet.data import shapes
    from dreamlet.evaluation import evaluate_shapes
    from dreamlet.pipeline import Pipeline
    from dreamlet.training import TrainConfig, train

    data = dict(spec.get("data", {}))
    cells = data.pop("pair_cells", None)
    if cells:  # a diagnostic: fewer layouts per pair relation ("aligned": same row or column; "far": also 2 cells apart)
        for relation, pairs in shapes.PAIR_CELLS.items():
            axis = 0 if relation in ("to the left of", "to the right of") else 1  # row for left/right, column for above/below
            keep = [(a, b) for a, b in pairs if divmod(a, 3)[axis] == divmod(b, 3)[axis]
                    and (cells == "aligned" or abs(divmod(a, 3)[1 - axis] - divmod(b, 3)[1 - axis]) == 2)]
            pairs[:] = keep
    if data:  # the dataset's mix (share of pair scenes, of canonical captions) for this experiment
        shapes_with(data)
    run = out / spec["name"]
    config = TrainConfig(out=str(run), steps=spec["steps"], sample_every=0, checkpoint_every=0, precision="fp32",
                         settings=spec.get("model", {}), **spec.get("train", {}))
    started = time.perf_counter()
    model_dir = train(config, quiet=True)
    seconds = time.perf_counter() - started
    pipeline = Pipeline.load(model_dir)
    pipeline.precision = "fp32"
    for guidance in spec.get("guidance", [None]):
        for steps in spec.get("sample_steps", [None]):
            report = evaluate_shapes(model_dir, prompts=spec.get("prompts", 64), seeds=2, guidance=guidance,
                                     steps=steps, pipeline=pipeline,
                                     prompt_set=spec.get("prompt_set", "validation"))
            row = dict(name=spec["name"], steps=spec["steps"], model=spec.get("model", {}),
                       train=spec.get("train", {}), data=spec.get("data", {}), guidance=report["guidance"],
                       sample_steps=report["steps"], prompt_set=report["prompt_set"], seen=report["seen"],
                       heldout=report["heldout"], pair=report["pair"], attributes=report["attributes"], train_seconds=seconds)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("experiments")
    parser.add_argument("--out", default=str(ROOT / "runs" / "sweep"))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--results", help="also write these experiments' rows, with how they were made, to this JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one experiment (JSON)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        return run_one(json.loads(args.one), out)
    specs = json.loads(Path(args.experiments).read_text())
    started = time.time()
    jobs = [(spec["name"], [sys.executable, __file__, args.experiments, "--out", str(out), "--one", json.dumps(spec)],
             out / f"{spec['name']}.log") for spec in specs]
    for name, returncode in side_by_side(jobs, args.parallel):
        print(f"{time.time() - started:6.0f}s {name} exit {returncode}", flush=True)
    if args.results:
        from docs_section import command_line, keep_results
        names = {spec["name"] for spec in specs}
        rows = [json.loads(line) for line in open(out / "results.jsonl")] if (out / "results.jsonl").is_file() else []
        keep_results(Path(args.results), command_line("sweep.py", sys.argv[1:]), [r for r in rows if r["name"] in names],
                     threads=f"1 thread per run, {args.parallel} side by side", experiments=specs)


def side_by_side(jobs: list[tuple[str, list[str], Path]], parallel: int, env: dict | None = None):
    """Run each job's command (name, argv, log file) with one thread, `parallel` at a time, in order;
    yields (name, exit code) as each ends."""
    waiting, running = list(jobs), []
    env = (env or os.environ) | {"OMP_NUM_THREADS": "1"}
    while waiting or running:
        while waiting and len(running) < parallel:
            name, argv, log = waiting.pop(0)
            with open(log, "w") as f:
                running.append((name, subprocess.Popen(argv, stdout=f, stderr=f, env=env)))
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                yield name, proc.returncode
        time.sleep(1)


if __name__ == "__main__":
    main()
