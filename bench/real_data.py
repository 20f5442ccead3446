"""How well each run follows the text on real data: a list of (family, data, size, minutes) trained
with their defaults, each judged by a CLIP trained from scratch on the same data at the same size,
on the data's held-out captions (never trained on) and on seen (training) captions: CLIP score and
R-precision beside the real pictures' own, FID in that CLIP space, and a captioned grid of held-out
and seen captions. Writes bench/results/real_data.json, docs/images/real_<run>.png and a table in
docs/benchmarks.md.

    python bench/real_data.py diffusion:emoji:32:30 latent-diffusion:emoji:64:30 [--clip-minutes 5]
    python bench/real_data.py latent-diffusion:emoji:64:2 --clip-minutes 1 --count 32   # a smoke run
    python bench/real_data.py cascade:emoji:64:30    # the 32 -> 64 cascade: half the minutes for each stage
    python bench/real_data.py diffusion,preview.rank=0:emoji:32:30   # with a setting changed (--set's form)
    python bench/real_data.py diffusion,optimizer=adamw:emoji:32:30  # or a training flag
    python bench/real_data.py diffusion:emoji:32:10 --judge-only --rerank 1   # as drawn without reranking

Pictures are drawn as the model draws by default (a diffusion model: the best of 4 by its own judgement);
`--rerank K` draws the best of K instead (1: each picture alone), and the row's name says so.

`cascade` is not a family: it trains the default diffusion model at half the size for half the
minutes, then a diffusion-sr stage on it (`--base`) for the other half, as docs/imagen.md does.

Runs go to runs/bench/real/<family>-<data>-<size>px-<minutes>min; a CLIP per (data, size) is trained
once into runs/bench/real/clip-<data>-<size>px and reused (`--retrain-clip` trains it again).
`--judge-only` judges runs already there. Use a short --count and minutes for a smoke run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import command_line, commit, machine, write_section  # noqa: E402

from dreamlet.evaluation import evaluate_with_clip  # noqa: E402
from dreamlet.images import captioned_grid  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402
from dreamlet.scoring import ClipScorer  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402


def parse_run(spec: str) -> dict:
    """family[,key=value...]:data:size:minutes; the settings are --set's, e.g. diffusion,preview.rank=0, or
    a training flag's (a TrainConfig field), e.g. diffusion,optimizer=adamw."""
    import dataclasses
    from dreamlet.cli import parse_settings
    family_settings, data, size, minutes = spec.split(":")
    family, *settings = family_settings.split(",")
    settings = parse_settings(settings)
    flags = {f.name for f in dataclasses.fields(TrainConfig)}
    return dict(family=family, settings={k: v for k, v in settings.items() if k not in flags},
                train={k: v for k, v in settings.items() if k in flags}, data=data, size=int(size),
                minutes=float(minutes), name=f"{family_settings}-{Path(data).name}-{size}px-{minutes}min")


def clip_for(data: str, size: int, minutes: float, out: Path, retrain: bool) -> Path:
    run = out / f"clip-{Path(data).name}-{size}px"
    if retrain or not (run / "model").is_dir():
        shutil.rmtree(run, ignore_errors=True)
        train(TrainConfig(model="clip", data=data, size=size, out=str(run), minutes=minutes, sample_every=0),
              quiet=True)
    return run / "model"


def seen_scores(pipeline: Pipeline, scorer: ClipScorer, data: str, count: int, distractors: int,
                rerank: int | None = None):
    """The same figures on captions the model trained on, with their own pictures as the real ones; and the
    first eight pictures drawn with their captions, for the grid."""
    from dreamlet.data import load
    from dreamlet.evaluation import data_options
    dataset = load(data, pipeline.image_size, quiet=True, **data_options(pipeline))
    records = dataset.train_index[np.linspace(0, len(dataset.train_index) - 1, count).astype(int)]
    real, captions = dataset.rows(records), [dataset.all_captions[r][0] for r in records]
    fake = pipeline.pictures(captions, list(range(len(captions))), rerank=rerank)
    pool = sorted({c for r in dataset.train_index[:5000] for c in dataset.all_captions[r]})
    scores = {"seen_clip_score": scorer.clip_score(fake, captions),
              "seen_clip_score_real": scorer.clip_score(real, captions),
              "seen_r_precision": scorer.r_precision(fake, captions, pool, distractors),
              "seen_r_precision_real": scorer.r_precision(real, captions, pool, distractors)}
    return scores, fake[:8], captions[:8]


def judge(run: dict, model_dir: Path, clip_dir: Path, count: int, distractors: int, rerank: int | None = None) -> dict:
    pipeline = Pipeline.load(model_dir)
    scorer = ClipScorer(clip_dir)
    report = evaluate_with_clip(model_dir, clip_dir, run["data"], count=count, distractors=distractors,
                                pipeline=pipeline, rerank=rerank)
    seen, seen_pictures, seen_captions = seen_scores(pipeline, scorer, run["data"], count, distractors, rerank)
    from dreamlet.evaluation import heldout_set
    _, heldout_captions, _ = heldout_set(run["data"], pipeline.image_size, 16)
    heldout_pictures = pipeline.pictures(heldout_captions, list(range(len(heldout_captions))), rerank=rerank)
    grid = ROOT / "docs" / "images" / f"real_{run['name']}.png"
    captioned_grid(np.concatenate([heldout_pictures, seen_pictures]),
                   [f"{c} (held-out)" for c in heldout_captions] + [f"{c} (seen)" for c in seen_captions],
                   columns=8).save(grid)
    scalars = {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
    return run | scalars | seen | {"grid": str(grid.relative_to(ROOT))}


def train_run(run: dict, run_dir: Path) -> None:
    """One run with its family's defaults; a cascade is two runs of half the minutes each."""
    shutil.rmtree(run_dir, ignore_errors=True)
    data, size, minutes = run["data"], run["size"], run["minutes"]
    if run["family"] != "cascade":
        train(TrainConfig(model=run["family"], data=data, size=size, minutes=minutes, out=str(run_dir), sample_every=0,
                          settings=run["settings"], **run.get("train", {})), quiet=True)
        return
    base = run_dir.parent / f"{run['name']}-base"
    shutil.rmtree(base, ignore_errors=True)
    train(TrainConfig(model="diffusion", data=data, size=size // 2, minutes=minutes / 2, out=str(base), sample_every=0),
          quiet=True)
    train(TrainConfig(model="diffusion-sr", data=data, size=size, minutes=minutes / 2, out=str(run_dir), sample_every=0,
                      settings={"base": str((base / "model").resolve())}), quiet=True)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="family:data:size:minutes, e.g. latent-diffusion:emoji:64:30")
    parser.add_argument("--clip-minutes", type=float, default=5)
    parser.add_argument("--retrain-clip", action="store_true")
    parser.add_argument("--count", type=int, default=128, help="held-out and seen captions judged, each")
    parser.add_argument("--distractors", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "real"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "real_data.json"))
    parser.add_argument("--judge-only", action="store_true", help="judge the runs already under --out")
    parser.add_argument("--rerank", type=int, help="draw the best of K candidates (default: as the model draws)")
    args = parser.parse_args(argv)
    command = command_line("real_data.py", sys.argv[1:] if argv is None else argv)
    provenance = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), command=command, commit=commit(),
                      clip_minutes=args.clip_minutes)
    out, rows, retrained = Path(args.out), [], set()
    for run in map(parse_run, args.runs):
        key = (run["data"], run["size"])  # --retrain-clip: once per data set and size in this command
        clip_dir = clip_for(run["data"], run["size"], args.clip_minutes, out, args.retrain_clip and key not in retrained)
        retrained.add(key)
        run_dir = out / run["name"]
        if not args.judge_only:
            train_run(run, run_dir)
        if args.rerank is not None:  # a row (and grid) of its own beside the run drawn as by default
            run = run | {"name": f"{run['name']}-rerank{args.rerank}"}
        rows.append(judge(run, run_dir / "model", clip_dir, args.count, args.distractors, args.rerank) | provenance)
        print(json.dumps(rows[-1]), flush=True)
    measured = merged(Path(args.results), rows, count=args.count, distractors=args.distractors)
    Path(args.results).write_text(json.dumps(measured, indent=2, default=str))
    write_docs(measured)


def merged(results: Path, rows: list[dict], **settings) -> dict:
    """The results file with these rows in place of the rows of the same name, so that runs measured by
    separate commands share one table; rows judged with other --count or --distractors are dropped."""
    try:
        old = json.loads(results.read_text())
    except (OSError, ValueError):
        old = {}
    names = {row["name"] for row in rows}
    same = all(old.get(k) == v for k, v in settings.items())
    kept = [row for row in old.get("rows", []) if same and row["name"] not in names and "command" in row]
    return settings | {"rows": kept + rows}


def write_docs(measured: dict) -> None:
    def f(row, key, fmt="{:.2f}"):
        return fmt.format(row[key]) if row.get(key) is not None else "-"

    lines = ["Each run trained with its family's defaults for the minutes given (`cascade`: the default diffusion "
             "model at half the size for half the minutes, then a diffusion-sr stage on it for the other half), judged "
             f"by a CLIP trained on the same data and size, on {measured['count']} held-out captions (never trained "
             f"on) and {measured['count']} seen ones, R-precision against {measured['distractors']} distractors. In "
             "brackets: the same figure for the real pictures of those captions. Where each row was measured, and "
             "its command: bench/results/real_data.json.", "",
             "| run | R-precision held-out (real) | R-precision seen (real) | CLIP score held-out (real) | FID in CLIP "
             "space | s / picture | measured | grid |", "|---|---|---|---|---|---|---|---|"]
    for r in measured["rows"]:
        lines.append(f"| {r['name']} | {f(r, 'r_precision')} ({f(r, 'r_precision_real')}) "
                     f"| {f(r, 'seen_r_precision')} ({f(r, 'seen_r_precision_real')}) "
                     f"| {f(r, 'clip_score', '{:.1f}')} ({f(r, 'clip_score_real', '{:.1f}')}) | {f(r, 'fid', '{:.1f}')} "
                     f"| {f(r, 'seconds_per_image', '{:.3f}')} | {r['date']}, {r['commit']} "
                     f"| ![{r['name']}]({r['grid'].removeprefix('docs/')}) |")
    write_section("real", "Real data: how well each run follows the text (bench/real_data.py)", "\n".join(lines))


if __name__ == "__main__":
    main()
