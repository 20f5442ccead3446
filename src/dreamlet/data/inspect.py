"""`dreamlet data inspect`: what a dataset holds, what was skipped and why, and a contact sheet."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..images import captioned_grid
from .cache import CaptionedImages


def inspect(dataset: CaptionedImages, sheet: str | Path | None = None, count: int = 48, seed: int = 0) -> dict:
    """A report of the dataset (and a contact sheet PNG of `count` random pairs when `sheet` is given,
    the pictures as the model sees them: from the cache, fitted by the dataset's fit)."""
    sizes = np.load(dataset.directory / "sizes.npy")
    captions = [c for options in dataset.all_captions for c in options]
    words = [len(c.split()) for c in captions]
    vocabulary = Counter(w.lower().strip(".,;:!?\"'") for c in captions for w in c.split())
    report = {
        "source": dataset.meta["source"], "cache": str(dataset.directory), "size": dataset.size, "fit": dataset.fit,
        "not_square": int((sizes[:, 0] != sizes[:, 1]).sum()),
        "pictures": dataset.meta["count"], "train": len(dataset.train_index), "heldout": len(dataset.heldout_index),
        "skipped": dataset.skipped, "skipped_total": sum(dataset.skipped.values()),
        "original_width": _spread(sizes[:, 0]), "original_height": _spread(sizes[:, 1]),
        "captions": len(captions), "captions_per_picture": round(len(captions) / max(1, dataset.meta["count"]), 2),
        "words_per_caption": _spread(np.asarray(words)), "vocabulary": len(vocabulary),
        "common_words": [w for w, _ in vocabulary.most_common(15)],
    }
    if sheet is not None and dataset.meta["count"]:
        rng = np.random.default_rng(seed)
        records = np.sort(rng.choice(dataset.meta["count"], min(count, dataset.meta["count"]), replace=False))
        images = dataset.rows(records)
        Path(sheet).parent.mkdir(parents=True, exist_ok=True)
        captioned_grid(images, [dataset.all_captions[r][0] for r in records], columns=8).save(sheet)
        report["contact_sheet"] = str(sheet)
    return report


def _spread(values: np.ndarray) -> dict:
    if not len(values):
        return {}
    return {"min": int(values.min()), "median": float(np.median(values)), "mean": round(float(values.mean()), 1),
            "max": int(values.max())}


def describe(report: dict) -> str:
    """The report as lines for a terminal."""
    source = report["source"]
    lines = [f"dataset:   {source.get('path', source.get('name'))} (format {source.get('format')})",
             f"cache:     {report['cache']} ({report['size']} px)",
             f"fit:       {report['fit']}: {report['not_square']:,} of {report['pictures']:,} pictures not square, "
             + ("centre-cropped (--fit pad keeps them whole)" if report["fit"] == "crop"
                else "padded onto their background colour (--fit crop fills the square)"),
             f"pictures:  {report['pictures']:,} usable: {report['train']:,} for training, "
             f"{report['heldout']:,} held out"]
    if report["skipped"]:
        reasons = ", ".join(f"{n:,} {why}" for why, n in sorted(report["skipped"].items(), key=lambda kv: -kv[1]))
        lines.append(f"skipped:   {report['skipped_total']:,} ({reasons})")
    else:
        lines.append("skipped:   none")
    w, h = report["original_width"], report["original_height"]
    if w:
        lines.append(f"sizes:     width {w['min']}-{w['max']} (median {w['median']:g}), "
                     f"height {h['min']}-{h['max']} (median {h['median']:g})")
    c = report["words_per_caption"]
    if c:
        lines.append(f"captions:  {report['captions']:,} ({report['captions_per_picture']} per picture), "
                     f"{c['min']}-{c['max']} words (mean {c['mean']}), vocabulary {report['vocabulary']:,} words")
        lines.append(f"common:    {', '.join(report['common_words'])}")
    if report.get("contact_sheet"):
        lines.append(f"sheet:     {report['contact_sheet']}")
    return "\n".join(lines)
