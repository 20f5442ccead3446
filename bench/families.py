"""The model families side by side on shapes: each trained for the same time on this machine with its
own defaults, then judged on the same canonical prompts and seeds by the same judge, with training
images/s and sampling seconds per picture. Writes the table into docs/benchmarks.md.

    .venv/bin/python bench/families.py [--families diffusion gan dalle ...] [--minutes 15] [--reuse]
                                       [--clip CLIPMODEL --rerank 8] [--seed S]

Runs go to runs/bench/families/NAME; `--reuse` judges a finished run again instead of retraining it.
Rows are kept in bench/results/families.json, so measuring one family again leaves the others' rows;
`--store FILE` keeps them in FILE instead and leaves the docs alone (bench/peers.py, one-thread runs).
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import commit, machine, write_section  # noqa: E402

from dreamlet.evaluation import evaluate_shapes  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402

# the GAN before config version 5: no layout stem, the family-wide text encoder
NO_LAYOUT = {"layout_heads": 0, "text": {"conv": 0}}
# name -> (family, model settings, what it is)
VARIANTS = {
    "diffusion": ("diffusion", {}, "text-conditional diffusion (DiT, CFG)"),
    "gan": ("gan", {}, "text-conditional GAN (projection D, matching-aware, redrawing loss, noise code, layout stem)"),
    "gan-adversarial-only": ("gan", {"regression": 0.0, "adversarial": 1.0} | NO_LAYOUT,
                             "the GAN before the redrawing loss (config version 2)"),
    "gan-adversarial-1": ("gan", {"adversarial": 1.0, "code_kl": 0.0} | NO_LAYOUT,
                          "the GAN of config version 3 (no noise code) with adversarial weight 1"),
    "gan-no-code": ("gan", {"code_kl": 0.0} | NO_LAYOUT, "the GAN of config version 3: redrawing loss, no noise code"),
    "gan-no-layout": ("gan", NO_LAYOUT, "the GAN of config version 4: noise code, no layout stem"),
    "gan-hash": ("gan-hash", {}, "the seed's DCGAN, prompt hashed into the noise"),
    "dalle": ("dalle", {}, "DALL-E: VQ tokens + decoder-only transformer, raster order"),
    "dalle-plan": ("dalle", {"plan_cell": 2}, "DALL-E with a colour plan drawn before the codes (`plan_cell=2`)"),
    "dalle-encdec": ("dalle", {"arch": "encdec"}, "dalle-mini style: text encoder + code decoder"),
    "dalle-maskgit": ("dalle", {"decoder": "maskgit"}, "DALL-E tokens, MaskGIT parallel decoding"),
}


def run_family(name: str, minutes: float, out: Path, prompts: int, seeds: int, reuse: bool,
               clip: str | None, rerank: int, seed: int = 0) -> dict:
    family, settings, _ = VARIANTS[name]
    run = out / name
    if not (reuse and (run / "model").is_dir()):
        shutil.rmtree(run, ignore_errors=True)
        train(TrainConfig(model=family, out=str(run), minutes=minutes, settings=settings, seed=seed), quiet=True)
    log = list(csv.DictReader(open(run / "train_log.csv")))
    batch = json.loads((run / "model" / "config.json").read_text())["train"]["batch_size"]
    steps, seconds = int(log[-1]["step"]), float(log[-1]["elapsed_s"])
    report = evaluate_shapes(run / "model", prompts=prompts, seeds=seeds)
    row = dict(name=name, measured=time.strftime("%Y-%m-%d"), machine=machine(), budget_minutes=minutes, steps=steps,
               batch=batch, images_per_s=steps * batch / seconds, seen=report["seen"], heldout=report["heldout"],
               pair=report["pair"], attributes=report["attributes"], seconds_per_image=report["seconds_per_image"],
               sampler=report["sampler"], sample_steps=report["steps"], commit=commit(), seed=seed)
    validation = evaluate_shapes(run / "model", prompts=prompts, seeds=seeds, prompt_set="validation")
    row["validation"] = dict(seen=validation["seen"], heldout=validation["heldout"], pair=validation["pair"])
    if clip:
        reranked = evaluate_shapes(run / "model", prompts=prompts, seeds=seeds, rerank=rerank, clip=clip)
        row["reranked"] = dict(k=rerank, seen=reranked["seen"], heldout=reranked["heldout"], pair=reranked["pair"])
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="+", default=["diffusion", "gan", "gan-hash"], choices=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--clip", help="a shapes CLIP model directory: also judge the best of --rerank candidates")
    parser.add_argument("--rerank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "families"))
    parser.add_argument("--store", help="keep the rows in this JSON file instead of bench/results/families.json and "
                                        "leave docs/benchmarks.md as it is (runs under other conditions, e.g. one thread)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # rows from earlier runs stay (each with its own date and command) unless this run measures them again
    store = Path(args.store) if args.store else ROOT / "bench" / "results" / "families.json"
    rows = {r["name"]: r for r in (json.loads(store.read_text()) if store.exists() else [])}
    command = " ".join(["python", "bench/families.py"] + [shlex.quote(a) for a in sys.argv[1:]])
    for name in args.families:
        rows[name] = run_family(name, args.minutes, out, args.prompts, args.seeds, args.reuse, args.clip, args.rerank,
                                    args.seed)
        rows[name].update(command=command, prompts=args.prompts, seeds=args.seeds)
        print(json.dumps(rows[name]), flush=True)
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(list(rows.values()), indent=2))
    if not args.store:
        write_table(rows)


def write_table(rows: dict) -> None:
    """The families section of docs/benchmarks.md from the stored rows (name -> row)."""
    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    lines = ["Each family trained for the same time on the same machine with its own defaults (a DALL-E run's "
             "budget includes its image tokenizer), then the same canonical prompts and seeds, judged by the exact "
             "shapes judge. *Reranked*: each picture is the best of K candidates by the project's shapes CLIP "
             "(`--clip`), judged the same way.", "",
             "| family | budget | steps x batch | train img/s | seen single | held-out single | pair "
             "| reranked (seen / held-out / pair) | colour | shape | size | position | relation | drawing | s/picture |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in [rows[n] for n in VARIANTS if n in rows]:
        a = r["attributes"]
        drawing = {"one forward pass": "one forward pass", "autoregressive": "code by code, KV cache"}.get(
            r["sampler"], f"{r['sample_steps']} {r['sampler']} steps")
        ranked = r.get("reranked")
        ranked = (f"best of {ranked['k']}: {pct(ranked['seen'])} / {pct(ranked['heldout'])} / {pct(ranked['pair'])}"
                  if ranked else "not measured")
        lines.append(f"| {r['name']}: {VARIANTS[r['name']][2]} | {r['budget_minutes']:g} min | {r['steps']} x {r['batch']} "
                     f"| {r['images_per_s']:.0f} | {pct(r['seen'])} | {pct(r['heldout'])} | {pct(r['pair'])} | {ranked} "
                     f"| {pct(a['color'])} | {pct(a['shape'])} | {pct(a['size'])} | {pct(a['position'])} "
                     f"| {pct(a['relation'])} | {drawing} | {r['seconds_per_image']:.4f} |")
    lines += ["", "Where each row comes from (date, machine, command, prompts x seeds):", ""]
    lines += [f"- {r['name']}: {r['measured']}, {r['machine']}; `{r['command']}`"
              + (f" at commit {r['commit']}" if r.get("commit") else "")
              + f"; {r['prompts']} prompts of each kind x {r['seeds']} seeds"
              + (f"; on the validation prompts: {pct(r['validation']['seen'])} / {pct(r['validation']['heldout'])} / "
                 f"{pct(r['validation']['pair'])}" if r.get("validation") else "")
              + (f". {r['note']}" if r.get("note") else "")
              for r in [rows[n] for n in VARIANTS if n in rows]]
    write_section("families", "The families side by side (shapes, 32 px, same budget, same judge)", "\n".join(lines))


if __name__ == "__main__":
    main()
