"""The families on emoji: each trained on the built-in emoji set (32 px) for the same time, then judged
on the set's held-out captions (never trained on) with a CLIP trained from scratch on the same set:
CLIP score and R-precision beside the real pictures' own, FID in CLIP space; and a grid of held-out
captions for the eye. Writes a table and docs/images/emoji_<family>.png into docs/benchmarks.md.

    .venv/bin/python bench/emoji_families.py [--families gan dalle] [--minutes 6] [--clip-minutes 4]

Needs Debian's fonts-noto-color-emoji (`make setup` installs it where it may). Runs go to
runs/bench/emoji/; an existing CLIP there is reused (`--retrain-clip` trains it again).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import command_line, write_section  # noqa: E402
from families import VARIANTS  # noqa: E402
from time_to_accuracy import machine  # noqa: E402

from dreamlet.evaluation import evaluate_clip_model, evaluate_with_clip, heldout_set  # noqa: E402
from dreamlet.images import captioned_grid  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402
from dreamlet.training import TrainConfig, train  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="+", default=["diffusion", "gan", "dalle"], choices=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--clip-minutes", type=float, default=4)
    parser.add_argument("--retrain-clip", action="store_true")
    parser.add_argument("--count", type=int, default=128, help="held-out captions judged")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "emoji"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "emoji.json"))
    parser.add_argument("--judge-only", action="store_true", help="judge the runs already under --out, train nothing")
    args = parser.parse_args(argv)
    command = command_line("emoji_families.py", sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    clip_run = out / "clip"
    if not args.judge_only and (args.retrain_clip or not (clip_run / "model").is_dir()):
        shutil.rmtree(clip_run, ignore_errors=True)
        train(TrainConfig(model="clip", data="emoji", out=str(clip_run), minutes=args.clip_minutes, sample_every=0),
              quiet=True)
    trained = {}
    for name in args.families:
        family, settings, _ = VARIANTS[name]
        run = out / name
        if not args.judge_only:
            shutil.rmtree(run, ignore_errors=True)
            train(TrainConfig(model=family, data="emoji", out=str(run), minutes=args.minutes, settings=settings,
                              sample_every=0), quiet=True)
        trained[name] = run / "model"
    clip_report = evaluate_clip_model(clip_run / "model")
    rows = []
    for name, model_dir in trained.items():
        report = evaluate_with_clip(model_dir, clip_run / "model", count=args.count)
        pipeline = Pipeline.load(model_dir)
        _, captions, _ = heldout_set("emoji", pipeline.image_size, 24)
        pictures = pipeline.draw(captions, list(range(len(captions))))
        grid = ROOT / "docs" / "images" / f"emoji_{name}.png"
        captioned_grid(pictures, captions, columns=8).save(grid)
        rows.append(dict(name=name, **{k: report[k] for k in report if not isinstance(report[k], (list, dict))}))
        print(json.dumps(rows[-1]), flush=True)
    measured = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), command=command, minutes=args.minutes,
                    clip_minutes=args.clip_minutes, clip=clip_report, rows=rows)
    Path(args.results).write_text(json.dumps(measured, indent=2, default=str))
    write_docs(measured)


def write_docs(measured: dict) -> None:
    rows, clip = measured["rows"], measured["clip"]

    def value(row, *keys, fmt="{:.1f}"):
        for key in keys:
            if row.get(key) is not None:
                return fmt.format(row[key])
        return "-"

    lines = [f"Measured {measured['date']} on {measured['machine']}. Command: `{measured['command']}`.", "",
             f"Each family trained on the emoji set at 32 px for {measured['minutes']:g} minutes with its defaults; judged "
             f"on the set's held-out captions (never trained on) by a CLIP trained on the same set for "
             f"{measured['clip_minutes']:g} minutes. The CLIP itself, on real held-out pictures: R-precision "
             f"{value(clip, 'r_precision_real', 'r_precision', fmt='{:.2f}')}, CLIP score "
             f"{value(clip, 'clip_score_real', 'clip_score')}.", "",
             "| family | CLIP score (real pictures) | R-precision (real) | FID in CLIP space | pictures | held-out captions |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {value(r, 'clip_score')} ({value(r, 'clip_score_real')}) "
                     f"| {value(r, 'r_precision', fmt='{:.2f}')} ({value(r, 'r_precision_real', fmt='{:.2f}')}) "
                     f"| {value(r, 'fid')} | {r.get('pictures', '-')} | ![{r['name']}](images/emoji_{r['name']}.png) |")
    write_section("emoji", "The families on emoji (held-out captions, CLIP-judged)", "\n".join(lines))


if __name__ == "__main__":
    main()
