"""Does a judge read where things are? For real pair scenes of shapes (a data seed no model trained on), compare
the judge's score of the true canonical caption with the caption whose two objects are swapped ("a red circle to
the left of a blue square" against "a blue square to the left of a red circle", which is false): the share of
pictures for which it prefers the true one. 50 % is a judge blind to the relation; a chooser built on it can keep
the pictures with the right two objects, but not the ones where they stand right (docs/benchmarks.md,
twenty-sixth round).

    .venv/bin/python bench/relation_reading.py --clip runs/clip/model [--clip ...]
    .venv/bin/python bench/relation_reading.py --captioner F.safetensors --tokenizer PRIOR   # self_rerank's captioner
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import add_row  # noqa: E402

from dreamlet.data.shapes import ShapesDataset, canonical_caption, render  # noqa: E402


def pair_scenes(count: int, seed: int = 999) -> tuple[np.ndarray, list[str], list[str]]:
    """`count` real pair pictures, their captions, and their captions with the two objects swapped."""
    data, images, true, swapped = ShapesDataset(32, seed=seed), [], [], []
    index = 0
    while len(images) < count:
        scene, _ = data.scene(index)
        index += 1
        if scene.relation is None:
            continue
        a, b = scene.objects
        images.append(render(scene, 32))
        true.append(canonical_caption(scene))
        swapped.append(f"a {b.color} {b.shape} {scene.relation} a {a.color} {a.shape}")
    return np.stack(images), true, swapped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip", nargs="*", default=[], help="CLIP model directories")
    parser.add_argument("--captioner", nargs="*", default=[], help="bench/self_rerank.py's --captioner-file files")
    parser.add_argument("--tokenizer", help="a model whose tokenizer the captioners were trained with")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--results", help="a JSON file to add the rows to (bench/results/...)")
    args = parser.parse_args()
    images, true, swapped = pair_scenes(args.pairs)
    judges = [("clip", path) for path in args.clip] + [("captioner", path) for path in args.captioner]
    if args.captioner:
        from captioner_chooser import caption_scores, load_captioner
        from dreamlet.pipeline import Pipeline
        tokenizer = Pipeline.load(args.tokenizer).tokenizer
    for kind, path in judges:
        if kind == "clip":
            from dreamlet.scoring import ClipScorer
            clip = ClipScorer(path)
            right, wrong = clip.cosine(images, true).numpy(), clip.cosine(images, swapped).numpy()
        else:
            captioner = load_captioner(tokenizer, path)
            right, wrong = (caption_scores(captioner, tokenizer, images, tokenizer(c)) for c in (true, swapped))
        row = dict(name=f"{kind} {path}", judge=kind, path=path, pairs=args.pairs,
                   prefers_true=round(float((right > wrong).mean()), 3))
        print(json.dumps(row))
        if args.results:
            add_row(args.results, row, "relation_reading.py", sys.argv[1:])


if __name__ == "__main__":
    main()
