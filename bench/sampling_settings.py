"""A trained model drawn with other sampling settings, judged on the shapes prompts: the settings a model was
trained with are only its defaults, so a sampling default can be chosen on trained models without training
again. Each setting is a field of the model's config (as `--set` names it), changed for drawing only.

    .venv/bin/python bench/sampling_settings.py MODEL temperature=0.5 temperature=0.85,top_k=16 \
        [--prompt-set validation] [--results bench/results/X.json]

Prints one line per setting (the model's own settings first): seen / held-out / pair accuracy in %.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import add_row  # noqa: E402

from dreamlet.evaluation import evaluate_shapes  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402


def parse(setting: str) -> dict:
    """"temperature=0.5,top_k=4" -> {"temperature": 0.5, "top_k": 4} (numbers as JSON reads them)."""
    pairs = [item.split("=", 1) for item in setting.split(",") if item]
    return {key: json.loads(value) for key, value in pairs}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("settings", nargs="*", help="FIELD=VALUE[,FIELD=VALUE...] of the model's config")
    parser.add_argument("--prompt-set", default="validation", choices=["validation", "evaluation"])
    parser.add_argument("--results", help="a JSON file to add the rows to (bench/results/...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline = Pipeline.load(args.model)
    saved = pipeline.model.config
    for setting in ["", *args.settings]:
        pipeline.model.config = dataclasses.replace(saved, **parse(setting))
        started = time.perf_counter()
        report = evaluate_shapes(args.model, prompt_set=args.prompt_set, pipeline=pipeline)
        kinds = {kind: report[kind] for kind in ("seen", "heldout", "pair")}
        row = dict(name=f"{Path(args.model).parent.name} {setting or 'as trained'}", model=args.model,
                   setting=parse(setting), prompt_set=args.prompt_set, **kinds, seconds=time.perf_counter() - started)
        print(f"{setting or 'as trained':32s} " + " / ".join(f"{100 * value:.0f}" for value in kinds.values()), flush=True)
        if args.results:
            add_row(args.results, row, "sampling_settings.py", sys.argv[1:])


if __name__ == "__main__":
    main()
