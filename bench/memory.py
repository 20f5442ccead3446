"""Training memory: the --max-memory planner's estimate against what a real run uses.

For the diffusion model (CPU default preset, batch 32) at 32 and 64 px, with and without activation
checkpointing, each in a fresh process:
- estimate: what the planner predicts for the whole batch as one micro-batch (weights, EMA, AdamW
  moments and gradients, plus activations extrapolated from passes of 2 and 4 pictures);
- measured: the peak bytes of live torch tensors during a real `dreamlet.train` of 3 steps (weights,
  EMA, optimizer, gradients and activations all counted by the same dispatch-mode counter the
  planner uses on a CPU), and the process's peak RSS (Python, torch and allocator slack included).
For larger presets only the estimate, and the plan for a few budgets. Everything here runs on the
CPU (`device="cpu"`), in fp32; on a GPU the planner measures with torch.cuda.max_memory_allocated
under bf16 autocast instead, and those figures need a GPU run of their own.

    .venv/bin/python bench/memory.py [--sizes 32 64] [--large base:64 base:128] [--no-docs]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
BATCH, STEPS = 32, 3
MiB = 2 ** 20


class Measured(Exception):
    """Stops a run once the planner has measured the model: only its footprint is wanted."""


def one(kind: str, preset: str, size: int, checkpointing: bool) -> dict:
    """Run in a fresh process: `estimate` (the planner's footprint) or `measure` (a real run's peak)."""
    import dataclasses

    import torch
    import dreamlet.training as training
    from dreamlet.scaling import LiveTensorBytes
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with tempfile.TemporaryDirectory() as out:
        config = training.TrainConfig(out=out, preset=preset, size=size, batch_size=BATCH, steps=STEPS, sample_every=0,
                                      checkpoint_every=0, tokenizer_captions=2000, device="cpu")
        if kind == "estimate":
            def capture(footprint, batch_size, budget, world):
                raise Measured(footprint)
            training.plan_memory = capture
            try:
                training.train(dataclasses.replace(config, max_memory=1e6), quiet=True)
            except Measured as measured:
                f = measured.args[0]
                return dict(static=f.static, gradients=f.gradients,
                            fixed={"off": f.fixed[False], "on": f.fixed[True]},
                            per_picture={"off": f.per_picture[False], "on": f.per_picture[True]})
            raise RuntimeError("the planner did not run")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.perf_counter()
        with LiveTensorBytes() as counter:
            training.train(dataclasses.replace(config, checkpointing=checkpointing), quiet=True)
        return dict(tensors=counter.peak, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                    rss_before=rss_before, seconds=time.perf_counter() - started)


def run_one(kind: str, preset: str, size: int, checkpointing: bool) -> dict:
    result = subprocess.run([sys.executable, __file__, "--one", kind, preset, str(size), str(int(checkpointing))],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="measured: the CPU preset at these sizes")
    parser.add_argument("--large", nargs="*", default=["base:64", "base:128"], help="estimated only: PRESET:SIZE")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1, 2, 4, 8, 24], help="GiB: plans shown for the large ones")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if args.one:
        kind, preset, size, on = args.one
        print(json.dumps(one(kind, preset, int(size), bool(int(on)))))
        return

    from dreamlet.checkpoint import UserError
    from dreamlet.scaling import Footprint, GiB, plan_memory
    from time_to_accuracy import machine

    def mib(value):
        return f"{value / MiB:,.0f} MiB"

    def footprint_of(e: dict) -> Footprint:
        return Footprint(e["static"], e["gradients"], {on: e["fixed"]["on" if on else "off"] for on in (False, True)},
                         {on: e["per_picture"]["on" if on else "off"] for on in (False, True)}, "cpu")

    measured_rows, large_rows, results = [], [], {"measured": [], "estimated": []}
    for size in args.sizes:
        footprint = footprint_of(run_one("estimate", "small", size, False))
        for on in (False, True):
            real = run_one("measure", "small", size, on)
            guess = footprint.bytes(BATCH, on)
            results["measured"].append(dict(size=size, checkpointing=on, estimate=guess, **real))
            print(json.dumps(results["measured"][-1]), flush=True)
            measured_rows.append(f"| small | {size} px | {'on' if on else 'off'} | {mib(guess)} | {mib(real['tensors'])} "
                                 f"| {guess / real['tensors']:.2f} | {mib(real['rss'])} ({mib(real['rss_before'])} before "
                                 f"training) |")
    for item in args.large:
        preset, size = item.split(":")
        e = run_one("estimate", preset, int(size), False)
        results["estimated"].append(dict(preset=preset, size=int(size), **e))
        print(json.dumps(results["estimated"][-1]), flush=True)
        footprint = footprint_of(e)
        plans = []
        for budget in args.budgets:
            try:
                p = plan_memory(footprint, BATCH, budget * GiB)
                plans.append(f"{budget:g} GiB: {p.accumulate} x {p.micro_batch}{' + checkpointing' if p.checkpointing else ''}")
            except UserError:
                plans.append(f"{budget:g} GiB: does not fit")
        large_rows.append(f"| {preset} | {size} px | {mib(e['static'])} | {mib(footprint.per_picture[False])} / "
                          f"{mib(footprint.per_picture[True])} | {footprint.bytes(BATCH, False) / GiB:.2f} / "
                          f"{footprint.bytes(BATCH, True) / GiB:.2f} GiB | {'; '.join(plans)} |")

    results_file = ROOT / "bench" / "results" / "memory.json"
    results_file.parent.mkdir(exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2))
    from docs_section import command_line
    command = command_line("memory.py", sys.argv[1:])
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}. Command: `{command}`.", "",
             f"The diffusion model (DiT), batch {BATCH} in one micro-batch, fp32 on the CPU. *Estimate*: the "
             "`--max-memory` planner's prediction (weights, EMA, AdamW moments and gradients counted; activations "
             "measured on passes of 2 and 4 pictures and extrapolated). *Measured*: the peak of live "
             f"torch tensors during a real `dreamlet.train` of {STEPS} steps, counted by the same dispatch-mode "
             "counter (everything the run allocates: weights, EMA, optimizer, gradients, activations). Peak RSS is "
             "the whole process: Python, torch's libraries and the allocator's slack on top of the tensors.", "",
             "| preset | size | checkpointing | estimate | measured tensors | estimate / measured | process peak RSS |",
             "|---|---|---|---|---|---|---|", *measured_rows, "",
             f"Larger presets, estimated only (the same probes on this CPU, fp32; batch {BATCH}). A GPU run measures "
             "with `torch.cuda.max_memory_allocated` and under bf16 autocast, which keeps many activations at half "
             "the size: GPU figures need a GPU, and there is none here.", "",
             "| preset | size | weights, EMA, AdamW | activations per picture (checkpointing off / on) "
             f"| estimated peak, batch {BATCH} (off / on) | plan (micro-batches x pictures) |",
             "|---|---|---|---|---|---|", *large_rows]
    table = "\n".join(lines)
    print(table)
    if not args.no_docs:
        from docs_section import write_section
        write_section("memory", "Training memory", table)


if __name__ == "__main__":
    main()
