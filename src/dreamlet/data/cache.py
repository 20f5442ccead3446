"""The decoded-image cache every finite dataset trains from, and the dataset object that reads it.

A source (a folder, COCO, CIFAR, tar shards, parquet, the built-in emoji and digits) is read once,
record by record: each image is decoded, converted to RGB, made square by the fit (centre-cropped, or
padded onto its background colour: decode.fit_square) and resized, and appended
as a row of uint8 to `images.u8` (a plain array file: `CaptionedImages.array()` memory-maps it);
captions go to `captions.jsonl`. Bad records are skipped and counted by reason in `meta.json`. The
directory is written under a temporary name and renamed when complete, so an interrupted build
leaves no half cache. Training reads only the rows of each batch (pread), so memory stays bounded
however large the set is.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..bars import progress_bar
from ..checkpoint import write_dir_atomically
from .decode import Skip, clean_caption, decode_image

CACHE_VERSION = 1
MIN_FOR_HELDOUT = 100  # sets smaller than this hold nothing out unless their reader says so


@dataclass
class Record:
    """One image and its captions, as a reader found them."""
    key: str                                          # where it came from, for reports
    image: bytes | np.ndarray | Callable[[], bytes] | None  # encoded bytes, a uint8 RGB array, or a loader
    captions: list | None                             # one or several (str, or bytes still to be decoded)
    problem: str | None = None                        # the reader already knows why this record is unusable
    heldout: bool | None = None                       # fixed evaluation split; None: chosen from the key


def cache_root() -> Path:
    return Path(os.environ.get("DREAMLET_CACHE", Path.home() / ".cache" / "dreamlet"))


def cache_key(*parts) -> str:
    return hashlib.sha1(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


def in_heldout(key: str, fraction: float) -> bool:
    """A fixed, content-independent evaluation split: the same records whatever order they come in."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 16 ** 8 < fraction


def build_cache(records: Iterable[Record], target: Path, size: int, source: dict,
                heldout_fraction: float = 0.02, quiet: bool = False, fit: str = "crop") -> None:
    """Decode every record into TARGET (see the module docstring). A reader's arrays are square already
    (CIFAR, the built-in sets) and are taken as they are; encoded pictures are made square by `fit`."""
    def write(tmp: Path):
        skipped, seen = Counter(), set()
        sizes, split, count = [], [], 0
        started = time.perf_counter()
        bar = progress_bar(desc=f"caching {source.get('name', 'data')} at {size} px ({fit})", unit=" images",
                           disable=quiet, mininterval=1.0)
        with bar, open(tmp / "images.u8", "wb") as images, open(tmp / "captions.jsonl", "w") as captions:
            for record in records:
                bar.update(1)
                try:
                    if record.problem:
                        raise Skip(record.problem)
                    if record.captions is None or len(record.captions) == 0:
                        raise Skip("no caption")
                    texts = []
                    for raw in record.captions:  # keep the good captions of a record; skip it if none is good
                        try:
                            texts.append(clean_caption(raw))
                        except Skip as skip:
                            problem = skip
                    if not texts:
                        raise problem
                    data = record.image() if callable(record.image) else record.image
                    if data is None:
                        raise Skip("no image")
                    if isinstance(data, np.ndarray):
                        pixels, original = data, (data.shape[1], data.shape[0])
                        if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8:
                            raise ValueError(f"reader gave an array of {pixels.shape} {pixels.dtype}")
                    else:
                        pixels, original = decode_image(data, size, fit=fit)
                    digest = hashlib.sha1(pixels.tobytes() + "\n".join(texts).encode()).digest()[:12]
                    if digest in seen:
                        raise Skip("duplicate")
                    seen.add(digest)
                except Skip as skip:
                    skipped[str(skip)] += 1
                    bar.set_postfix_str(f"skipped {sum(skipped.values())}", refresh=False)
                    continue
                except OSError:  # the file went away or cannot be read
                    skipped["unreadable file"] += 1
                    continue
                images.write(np.ascontiguousarray(pixels).tobytes())
                captions.write(json.dumps(texts, ensure_ascii=False) + "\n")
                sizes.append(original)
                held = record.heldout if record.heldout is not None else in_heldout(record.key, heldout_fraction)
                split.append((1 if held else 0) + (2 if record.heldout is None else 0))
                count += 1
        np.save(tmp / "sizes.npy", np.asarray(sizes, np.int32).reshape(-1, 2))
        split = np.asarray(split, np.uint8)
        if count < MIN_FOR_HELDOUT:  # too few pictures to spare any: a small set trains on all of them
            split[split == 3] = 2
        np.save(tmp / "split.npy", split & 1)
        meta = dict(version=CACHE_VERSION, count=count, size=size, fit=fit, source=source,
                    skipped=dict(sorted(skipped.items())), seconds=round(time.perf_counter() - started, 1))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if not quiet:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            print(f"cached {count:,} pictures at {size} px ({fit}) in {meta['seconds']} s"
                  + (f"; skipped {sum(skipped.values()):,} ({why})" if skipped else ""), file=sys.stderr)
    write_dir_atomically(target, write)


class CaptionedImages:
    """A cached dataset: (uint8 image (S, S, 3), caption) pairs, read a batch at a time.

    Training order is a seeded permutation per epoch and the caption of a record with several is a
    seeded choice, both from the item's index: item i is the same for the same seed, which is what
    makes a resumed run continue exactly."""

    def __init__(self, directory: str | Path, seed: int = 0, name: str = ""):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.size, self.seed, self.name = self.meta["size"], seed, name or self.meta["source"].get("name", "")
        self.fit = self.meta.get("fit", "crop")  # caches built before the fit was chosen were all cropped
        with open(self.directory / "captions.jsonl") as f:
            self.all_captions = [json.loads(line) for line in f]
        split = np.load(self.directory / "split.npy")
        self.train_index, self.heldout_index = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
        if not len(self.train_index):  # a set so small that all of it fell in the held-out split: train on it
            self.train_index = self.heldout_index
        self.skipped = self.meta["skipped"]
        self.row_bytes = self.size * self.size * 3
        self._fd = os.open(self.directory / "images.u8", os.O_RDONLY)
        self._orders: dict[int, np.ndarray] = {}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return len(self.train_index)

    def rows(self, records) -> np.ndarray:
        """Records by number -> (n, S, S, 3) uint8, read from disk (nothing else is kept in memory)."""
        out = np.empty((len(records), self.size, self.size, 3), np.uint8)
        for i, r in enumerate(records):
            out[i] = np.frombuffer(os.pread(self._fd, self.row_bytes, int(r) * self.row_bytes),
                                   np.uint8).reshape(self.size, self.size, 3)
        return out

    def array(self) -> np.memmap:
        """Every cached image as one memory-mapped (N, S, S, 3) uint8 array (train and held-out)."""
        return np.memmap(self.directory / "images.u8", np.uint8, "r",
                         shape=(self.meta["count"], self.size, self.size, 3))

    def _record(self, index: int) -> int:
        epoch, position = divmod(index, len(self.train_index))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.train_index)}
        return int(self._orders[epoch][position])

    def _caption(self, record: int, index: int) -> str:
        options = self.all_captions[record]
        if len(options) == 1:
            return options[0]
        return options[np.random.default_rng([self.seed, index, 1]).integers(len(options))]

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        record = self._record(index)
        return self.rows([record])[0], self._caption(record, index)

    def batch(self, start: int, count: int) -> tuple[np.ndarray, list[str]]:
        """Training items start..start+count-1: a (count, S, S, 3) uint8 array and their captions."""
        if not len(self.train_index):
            raise ValueError("no training pictures")
        records = [self._record(i) for i in range(start, start + count)]
        return self.rows(records), [self._caption(r, i) for r, i in zip(records, range(start, start + count))]

    def captions(self, count: int, start: int = 0) -> list[str]:
        """Training captions (every caption of each record, in record order) for a tokenizer."""
        out = []
        for r in self.train_index:
            out += self.all_captions[r]
            if len(out) >= count:
                break
        return out[:count]

    def heldout(self, count: int | None = None) -> tuple[np.ndarray, list[str]]:
        """Held-out pictures and their first captions, never trained on: for evaluation."""
        records = _spread(self.heldout_index, count)
        return self.rows(records), [self.all_captions[r][0] for r in records]

    def progress_prompts(self, count: int = 12) -> list[str]:
        """Captions to watch during training: held-out ones first, then training ones."""
        records = (list(_spread(self.heldout_index, count))
                   + list(self.train_index[: max(0, count - len(self.heldout_index))]))
        return [self.all_captions[r][0] for r in records[:count]]


def _spread(records: np.ndarray, count: int | None) -> np.ndarray:
    """`count` records spread evenly over `records` (which come in source order, often sorted by name)."""
    if count is None or count >= len(records):
        return records
    return records[np.linspace(0, len(records) - 1, count).round().astype(int)]
