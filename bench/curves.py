"""Time to accuracy for every family: one run per family for the longest budget, with the model kept
as it was after each shorter budget of training time (Progress.save), then every snapshot judged on
the same canonical prompts and seeds by the same judge. Writes a table and a plot
(docs/images/time_to_accuracy.png) into docs/benchmarks.md.

    .venv/bin/python bench/curves.py [--families diffusion gan dalle] [--budgets 2 5 10 20]

A run of some families replaces their rows in --results and keeps the others' rows, each family with the
date, machine, command and commit of the run that measured it (rerun a family whose default changed).

A snapshot is the run's EMA model at that point of *one* run whose learning-rate schedule spans the
longest budget, so an early snapshot is a little below what a run budgeted for that time reaches
(bench/time_to_accuracy.py measures separate runs for the default diffusion model). A dalle run
spends its first `tokenizer_share` of the budget on the image tokenizer: its clock counts that stage
too, so a snapshot before the prior has started has no row.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import command_line, commit, save_figure, write_section  # noqa: E402
from families import VARIANTS  # noqa: E402
from time_to_accuracy import machine  # noqa: E402

from dreamlet.evaluation import evaluate_shapes  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402

KINDS = [("seen", "seen single"), ("heldout", "held-out single"), ("pair", "pair")]


def first_stage_seconds(run: Path) -> float:
    """Training time a two-stage family (dalle) spent in its first stage before the callback's clock starts."""
    log = run / "tokenizer" / "train_log.csv"
    if not log.is_file():
        return 0.0
    rows = list(csv.DictReader(open(log)))
    return float(rows[-1]["elapsed_s"]) if rows else 0.0


def train_with_snapshots(name: str, budgets: list[float], run: Path) -> list[dict]:
    """Train `name` for max(budgets) minutes, saving the model at each budget; returns the snapshots."""
    family, settings, _ = VARIANTS[name]
    shutil.rmtree(run, ignore_errors=True)
    pending = sorted(budgets)[:-1]
    snapshots, offset = [], []

    def keep(progress):
        if not offset:
            offset.append(first_stage_seconds(run))
            while pending and pending[0] * 60 < offset[0]:  # passed while the first stage trained: no model yet
                pending.pop(0)
        minutes = (offset[0] + progress.elapsed_s) / 60
        while pending and minutes >= pending[0]:
            budget = pending.pop(0)
            directory = progress.save(run / "snapshots" / f"{budget:g}min")
            snapshots.append(dict(budget=budget, minutes=minutes, step=progress.step, model=str(directory)))

    config = TrainConfig(model=family, out=str(run), minutes=max(budgets), settings=settings, log_every=5,
                         sample_every=0)
    model_dir = train(config, callback=keep, quiet=True)
    log = list(csv.DictReader(open(run / "train_log.csv")))
    total = (offset[0] if offset else first_stage_seconds(run)) + float(log[-1]["elapsed_s"])
    snapshots.append(dict(budget=max(budgets), minutes=total / 60, step=int(log[-1]["step"]), model=str(model_dir)))
    batch = json.loads((model_dir / "config.json").read_text())["train"]["batch_size"]
    for s in snapshots:
        s["batch"] = batch
    return snapshots


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for axis, (key, label) in zip(axes, KINDS):
        for name in dict.fromkeys(r["name"] for r in rows):
            points = [(r["minutes"], 100 * r[key]) for r in rows if r["name"] == name]
            axis.plot(*zip(*points), marker="o", label=name)
        axis.set_title(label)
        axis.set_xlabel("training minutes")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("judged correct (%)")
    axes[0].set_ylim(-2, 102)
    axes[-1].legend(loc="upper left")
    save_figure(figure, path, title)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="+", default=["diffusion", "gan", "dalle"], choices=list(VARIANTS))
    parser.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "curves"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "curves.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "images" / "time_to_accuracy.png"))
    parser.add_argument("--table-only", action="store_true", help="write the table and plot from --results, train nothing")
    args = parser.parse_args(argv)
    command = command_line("curves.py", sys.argv[1:] if argv is None else argv)
    if args.table_only:  # write the table and plot again from the stored figures
        measured = json.loads(Path(args.results).read_text())
        write_docs(measured, args.plot)
        return
    rows = []
    for name in args.families:  # all training first, then all judging: the judge's work never shares the clock
        for snapshot in train_with_snapshots(name, args.budgets, Path(args.out) / name):
            rows.append(dict(name=name, **snapshot))
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        report = evaluate_shapes(row["model"], prompts=args.prompts, seeds=args.seeds)
        row.update(seen=report["seen"], heldout=report["heldout"], pair=report["pair"],
                   seconds_per_image=report["seconds_per_image"])
        print(json.dumps(row), flush=True)
    run = dict(families=args.families, date=time.strftime("%Y-%m-%d"), machine=machine(), command=command,
               commit=commit())
    measured = merge(Path(args.results), run, rows, dict(prompts=args.prompts, seeds=args.seeds, budgets=args.budgets))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(measured, indent=2))
    write_docs(measured, args.plot)


def merge(results: Path, run: dict, rows: list[dict], judge: dict) -> dict:
    """The stored figures with `run`'s families replaced by `rows`; the other families' rows stay, with the run
    that measured them, when they were judged and budgeted alike (else they are dropped)."""
    stored = json.loads(results.read_text()) if results.is_file() else {}
    alike = all(stored.get(k) == v for k, v in judge.items())
    kept_runs = []
    for old in stored.get("runs", []) if alike else []:
        families = [f for f in old["families"] if f not in run["families"]]
        if families:
            kept_runs.append(old | dict(families=families))
    kept = {f for old in kept_runs for f in old["families"]}
    order = list(dict.fromkeys([r["name"] for r in stored.get("rows", [])] + [r["name"] for r in rows]))
    merged = [r for r in stored.get("rows", []) if r["name"] in kept] + rows
    return dict(judge, runs=kept_runs + [run], rows=sorted(merged, key=lambda r: order.index(r["name"])))


def write_docs(measured: dict, plot_path: str) -> None:
    rows, budgets = measured["rows"], measured["budgets"]
    families = list(dict.fromkeys(r["name"] for r in rows))
    dates = " and ".join(dict.fromkeys(run["date"] for run in measured["runs"]))
    plot(rows, Path(plot_path), f"shapes 32 px, measured {dates}, {measured['prompts']} prompts x {measured['seeds']} seeds")

    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    longest = max(budgets)
    lines = [f"- {', '.join(run['families'])}: measured {run['date']} on {run['machine']} at commit {run['commit']}. "
             f"Command: `{run['command']}`." for run in measured["runs"]]
    lines += ["", f"Judge: {measured['prompts']} canonical prompts of each kind x {measured['seeds']} seeds, each "
              "family's default sampler. Raw results: bench/results/curves.json.", "",
             f"One run per family for {longest:g} minutes with its defaults; the model was kept after "
             f"{', '.join(f'{b:g}' for b in sorted(budgets)[:-1])} minutes of training time and each snapshot "
             "judged afterwards (the learning rate decays over the whole run, so an early snapshot is a little below a "
             "run budgeted for that time: compare the diffusion table above). A dalle run's clock includes its image "
             "tokenizer (the first 15 % of the budget).", "",
             f"![time to accuracy]({os.path.relpath(plot_path, ROOT / 'docs')})",
             "", "| family | after | steps x batch | seen single | held-out single | pair | s/picture |",
             "|---|---|---|---|---|---|---|"]
    for name in families:
        done = {r["budget"]: r for r in rows if r["name"] == name}
        for budget in sorted(budgets):
            r = done.get(budget)
            if r is None:
                lines.append(f"| {name} | {budget:g} min | still training its image tokenizer | | | | |")
                continue
            lines.append(f"| {name} | {budget:g} min | {r['step']} x {r['batch']} | {pct(r['seen'])} "
                         f"| {pct(r['heldout'])} | {pct(r['pair'])} | {r['seconds_per_image']:.4f} |")
    write_section("curves", "Time to accuracy, every family (shapes, 32 px)", "\n".join(lines))


if __name__ == "__main__":
    main()
