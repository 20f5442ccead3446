"""Captioned datasets: the built-in ones by name, and the formats people have by path.

Every dataset gives `batch(start, count)` -> (uint8 images (count, S, S, 3), captions), item i the
same for the same seed; `captions(n)` for training a tokenizer; `progress_prompts(n)` to watch.
Shapes is drawn on the fly; every other set is decoded once into a cache (cache.py) and read from it.
"""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import UserError, exclusive
from .builtin import emoji_fingerprint, read_digits, read_emoji
from .cache import CaptionedImages, build_cache, cache_key, cache_root
from .decode import FITS
from .formats import READERS, WITH_CAPTION_COLUMN, detect_format, fingerprint
from .shapes import SUPPORTED_SIZES, ShapesDataset

BUILTIN = {"shapes": None, "emoji": read_emoji, "digits": read_digits}
DATASETS = list(BUILTIN)  # names for --data; any other value is a path
FORMATS = list(READERS)


def load(name_or_path: str, size: int = 32, seed: int = 0, format: str | None = None, quiet: bool = False,
         fit: str = "crop", caption_column: str = ""):
    """A dataset by built-in name (shapes, emoji, digits) or by path (format detected, or `format`),
    pictures that are not square made square by `fit`: "crop" (centre crop) or "pad" (onto their
    background colour; decode.fit_square), captions from `caption_column` where rows have named columns
    (imagefolder metadata, parquet; default: the first of text, caption, ...). Finite sets are cached on
    first use under $DREAMLET_CACHE (default ~/.cache/dreamlet), one cache per set, size, fit and column."""
    if fit not in FITS:
        raise UserError(f"--fit {fit}: choose one of: {', '.join(FITS)}")
    if name_or_path == "shapes":  # drawn square: the fit changes nothing
        if size not in SUPPORTED_SIZES:
            raise UserError(f"--size {size} is not available for shapes; choose one of: "
                            f"{', '.join(map(str, SUPPORTED_SIZES))}")
        return ShapesDataset(size=size, seed=seed)
    if size < 8 or size > 512 or size % 8:
        raise UserError(f"--size {size}: use a multiple of 8 between 8 and 512")
    if name_or_path in BUILTIN:
        if caption_column:
            raise UserError(f"--caption-column is for data with named columns, not the built-in {name_or_path}")
        reader = BUILTIN[name_or_path]
        source = dict(name=name_or_path, format="builtin")
        identity = emoji_fingerprint() if name_or_path == "emoji" else []
        records, label = lambda: reader(size), name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise UserError(f"--data {name_or_path}: no such dataset (built-in sets: {', '.join(BUILTIN)}; "
                            f"or a path to a folder, .tar shards or parquet)")
        path = path.resolve()
        if format and format not in READERS:
            raise UserError(f"unknown --format {format!r}; choose one of: {', '.join(READERS)}")
        format = format or detect_format(path)
        source = dict(name=path.name, format=format, path=str(path))
        options = {}
        if caption_column:
            if format not in WITH_CAPTION_COLUMN:
                raise UserError(f"--caption-column is for {' and '.join(WITH_CAPTION_COLUMN)} data, not {format}")
            source["caption_column"] = caption_column  # a cache of its own (none: the key it always had)
            options = {"caption_column": caption_column}
        identity = fingerprint(path)
        records, label = lambda: READERS[format](path, size, **options), path.name
    # A crop cache keeps the key and name it had before the fit was a choice, so existing caches stay valid.
    tag, extra = ("", ()) if fit == "crop" else (f"-{fit}", (fit,))
    directory = cache_root() / f"{label}-{size}px{tag}-{cache_key(source, identity, size, *extra)}"
    if not (directory / "meta.json").is_file():
        with exclusive(directory, "build"):  # a second run that starts now waits, then finds the cache built
            if not (directory / "meta.json").is_file():
                build_cache(records(), directory, size, source, quiet=quiet, fit=fit)
    dataset = CaptionedImages(directory, seed=seed, name=name_or_path)
    if dataset.meta["count"] == 0:
        reasons = ", ".join(f"{n} {why}" for why, n in dataset.skipped.items()) or "nothing found"
        raise UserError(f"--data {name_or_path}: no usable pictures ({reasons})")
    return dataset


get_dataset = load
