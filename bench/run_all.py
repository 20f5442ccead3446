"""Every benchmark behind docs/benchmarks.md, one after another, each writing its own tables, plots and
bench/results/*.json (with the date, this command and the machine):

    .venv/bin/python bench/run_all.py            # the figures in the docs: about 90 minutes on 2 CPU cores
    .venv/bin/python bench/run_all.py --quick    # the same tables and plots from short runs, about 10 minutes
    .venv/bin/python bench/run_all.py --only samplers memory   # some stages
    .venv/bin/python bench/run_all.py --peers    # also the peers (installs them in runs/peers-venv; 30+ minutes)

Stages: curves (time to accuracy for every family, bench/curves.py), samplers (accuracy and time against
sampler steps, sampling memory: bench/samplers.py, on the curves' diffusion model), memory (training
memory against the planner: bench/memory.py) and, when asked, peers (bench/peers.py). Timings need a
quiet machine: run nothing else beside it. Other scripts in bench/ (ablations, the DALL-E sampling
times, the web API under load, the super-resolution stage) are run on their own; their sections say how.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FULL = {
    "curves": ["curves.py", "--budgets", "2", "5", "10", "20", "--prompts", "64", "--seeds", "2"],
    "samplers": ["samplers.py", "--model", "runs/bench/curves/diffusion/model", "--steps", "5", "10", "20", "50", "100",
                 "--prompts", "32", "--seeds", "1"],
    "memory": ["memory.py"],
    "peers": ["peers.py", "--peers", "imagen", "dalle", "minimagen", "--minutes", "15", "--with-dreamlet", "--jobs", "2",
              "--threads", "1", "--seeds", "1"],
}
QUICK = {
    "curves": ["curves.py", "--budgets", "0.5", "1", "2", "--prompts", "16", "--seeds", "1"],
    "samplers": ["samplers.py", "--model", "runs/bench/curves/diffusion/model", "--steps", "5", "10", "20",
                 "--prompts", "8", "--seeds", "1"],
    "memory": ["memory.py", "--sizes", "32", "--large", "base:64"],
    "peers": ["peers.py", "--quick", "--minutes", "1"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs and fewer prompts (about 10 minutes)")
    parser.add_argument("--only", nargs="+", choices=list(FULL), help="run these stages only")
    parser.add_argument("--peers", action="store_true", help="also train and judge the peers (bench/peers.py)")
    args = parser.parse_args()
    stages = QUICK if args.quick else FULL
    chosen = args.only or [s for s in stages if s != "peers" or args.peers]
    command = " ".join(["python", "bench/run_all.py"] + [shlex.quote(a) for a in sys.argv[1:]])
    environment = os.environ | {"DREAMLET_BENCH_COMMAND": command}
    failed = []
    for stage in chosen:
        script, *stage_args = stages[stage]
        started = time.time()
        print(f"== {stage}: python bench/{script} {' '.join(stage_args)}", flush=True)
        code = subprocess.call([sys.executable, str(ROOT / "bench" / script), *stage_args], env=environment, cwd=ROOT)
        print(f"== {stage}: {'done' if code == 0 else f'failed (exit {code})'} in {(time.time() - started) / 60:.1f} min",
              flush=True)
        if code:
            failed.append(stage)
    if failed:
        sys.exit(f"run_all: these stages failed: {', '.join(failed)} (the others' figures are written)")
    print("run_all: docs/benchmarks.md, docs/images/ and bench/results/ are up to date")


if __name__ == "__main__":
    main()
