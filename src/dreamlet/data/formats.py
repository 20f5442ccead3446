"""Readers for the captioned formats people already have. Each yields `Record`s one at a time
(never a whole set in memory) and reports what it cannot use as a record with a `problem`.

    imagefolder   metadata.jsonl, .csv or .parquet (file_name, text), as Hugging Face's, in the folder
                  or in each split's folder (train/, test/, validation/)
    captions      one .txt caption beside each image (photo.jpg + photo.txt)
    coco          annotations/captions_*.json and the image folders they name
    cifar         CIFAR-10 / CIFAR-100, binary or Python version (read without running pickle code)
    webdataset    .tar shards of key.jpg/png + key.txt/json, streamed
    hf            a Hugging Face `datasets` dataset saved with save_to_disk, or parquet files
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..checkpoint import UserError
from .cache import Record
from .decode import Skip, resize_square

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TEXT_FIELDS = ("text", "caption", "captions", "txt", "prompt", "sentence")
IMAGE_FIELDS = ("image", "img", "jpg", "png", "picture")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _image_files(root: Path) -> list[Path]:
    return [p for p in _files(root) if p.suffix.lower() in IMAGE_EXTENSIONS]


def _read_error(error: OSError) -> str:
    """The reason a file that cannot be read is skipped under."""
    if isinstance(error, FileNotFoundError):  # listed, then gone before it was read
        return "missing file"
    if isinstance(error, PermissionError):
        return "unreadable (permission denied)"
    return "unreadable file"


def _loader(path: Path):
    def load() -> bytes:
        try:
            return path.read_bytes()
        except OSError as error:
            raise Skip(_read_error(error)) from None
    return load


def _inside(root: Path, path: Path) -> Path | None:
    """PATH, normalised, when it is inside ROOT; None when a name from the data set's own metadata (`../x`, an
    absolute path) leads out of it. Checked on the names as written, not resolved: a folder of pictures the
    user linked in with a symlink still reads, and a metadata row cannot climb out with `..`."""
    base, path = (Path(os.path.normpath(p.absolute())) for p in (root, path))
    return path if path.is_relative_to(base) else None


# ----------------------------------------------------------------------------- folders

SPLITS = {"train": False, "test": True, "validation": True, "valid": True, "val": True}  # name: held out?
METADATA = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
OUTSIDE = "path outside the data folder"  # a file_name that leads out of the data set's folder is not read


def _metadata_rows(folder: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, row) of an imagefolder's metadata file; None for a line that is not a JSON object."""
    if (folder / "metadata.jsonl").is_file():
        with open(folder / "metadata.jsonl", "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line.decode("utf-8", "surrogateescape"))
                except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep to parse
                    yield number, None
    elif (folder / "metadata.csv").is_file():
        with open(folder / "metadata.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
            yield from enumerate(csv.DictReader(f), 2)
    else:
        number = 1
        for batch in _parquet_batches(folder / "metadata.parquet"):
            for row in batch.to_pylist():
                yield number, row
                number += 1


def _caption(row: dict, caption_column: str):
    """The row's caption: the named column's, or the first of TEXT_FIELDS it has."""
    if caption_column:
        return row.get(caption_column)
    return next((row[k] for k in TEXT_FIELDS if k in row), None)


def imagefolder_splits(root: Path) -> list[tuple[Path, bool | None]]:
    """The folders of an imagefolder with their held-out flag: train/, test/ (validation/ ...) each with
    its own metadata, as Hugging Face lays out splits; else the folder itself (dreamlet picks held-out
    pictures, None)."""
    splits = [(root / name, held) for name, held in SPLITS.items()
              if any((root / name / m).is_file() for m in METADATA)]
    return splits if splits and not any((root / m).is_file() for m in METADATA) else [(root, None)]


def read_imagefolder(root: Path, size: int, caption_column: str = "") -> Iterator[Record]:
    """Hugging Face's imagefolder layout: metadata.jsonl, .csv or .parquet with file_name and a text
    column (`caption_column`, or the first of TEXT_FIELDS), in the folder or in each split's folder
    (train/ is trained on, test/ and validation/ are held out)."""
    for folder, held in imagefolder_splits(root):
        prefix = "" if folder == root else f"{folder.name}/"
        listed = set()
        for number, row in _metadata_rows(folder):
            key = f"{prefix}metadata line {number}"
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or "\0" in row["file_name"]:
                yield Record(key, None, None, problem="bad metadata line")
                continue
            path = _inside(root, folder / row["file_name"])
            if path is None:
                yield Record(prefix + row["file_name"], None, None, problem=OUTSIDE, heldout=held)
                continue
            listed.add(path.resolve())
            caption = _caption(row, caption_column)
            if isinstance(caption, str) and any(0xDC80 <= ord(c) <= 0xDCFF for c in caption):
                caption = caption.encode("utf-8", "surrogateescape")  # bad UTF-8: let the cleaner count it
            captions = caption if isinstance(caption, list) else [caption]
            if not path.is_file():
                yield Record(prefix + row["file_name"], None, captions, problem="missing file", heldout=held)
                continue
            yield Record(prefix + row["file_name"], _loader(path), captions, heldout=held)
        for path in _image_files(folder):  # pictures the metadata does not mention have no caption
            if path.resolve() not in listed:
                yield Record(str(path.relative_to(root)), None, None, problem="no caption")


def read_captions_beside(root: Path, size: int) -> Iterator[Record]:
    """photo.jpg with its caption in photo.txt, anywhere under ROOT."""
    for path in _image_files(root):
        text = path.with_suffix(".txt")
        captions = [text.read_bytes()] if text.is_file() else None
        yield Record(str(path.relative_to(root)), _loader(path), captions)


# ----------------------------------------------------------------------------- COCO

def read_coco(root: Path, size: int) -> Iterator[Record]:
    """COCO captions: every annotations/captions_<split>.json with its images (5 captions each)."""
    for annotation_file in sorted((root / "annotations").glob("captions_*.json")):
        split = annotation_file.stem.removeprefix("captions_")
        try:
            data = json.loads(annotation_file.read_bytes())
            images, annotations = data["images"], data["annotations"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{annotation_file} is not a COCO captions file") from None
        captions: dict[int, list] = {}
        for a in annotations:
            if isinstance(a, dict) and "image_id" in a:
                captions.setdefault(a["image_id"], []).append(a.get("caption"))
        folders = [root / split, root / "images" / split, root / "images", root]
        for image in sorted(images, key=lambda i: str(i.get("file_name", ""))):
            name = str(image.get("file_name", ""))
            paths = [_inside(root, f / name) for f in folders]
            if None in paths:
                yield Record(f"{split}/{name}", None, None, problem=OUTSIDE)
                continue
            path = next((p for p in paths if name and p.is_file()), None)
            if path is None:
                yield Record(f"{split}/{name}", None, captions.get(image.get("id")), problem="missing file")
            else:
                yield Record(f"{split}/{name}", _loader(path), captions.get(image.get("id")))


# ----------------------------------------------------------------------------- CIFAR

def _cifar_captions(name: str) -> list[str]:
    name = name.replace("_", " ")
    article = "an" if name[0] in "aeiou" else "a"
    return [f"a photo of {article} {name}", f"{article} {name}", f"a picture of {article} {name}",
            f"a small photo of {article} {name}", name]


def _cifar_record(key: str, flat: np.ndarray, label_name: str, size: int) -> Record:
    from PIL import Image
    pixels = flat.reshape(3, 32, 32).transpose(1, 2, 0)
    if size != 32:
        pixels = resize_square(Image.fromarray(pixels), size)
    return Record(key, np.ascontiguousarray(pixels), _cifar_captions(label_name))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; anything else (which could run code) is refused."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2: a text codec, no code

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise UserError(f"{path} is not a CIFAR batch ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a CIFAR batch")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def read_cifar(root: Path, size: int) -> Iterator[Record]:
    """CIFAR-10 or CIFAR-100, binary or Python version, train and test batches, captioned from class names."""
    def names(path: Path) -> list[str]:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    if (root / "batches.meta.txt").is_file():        # CIFAR-10 binary: 1 label byte + 3072 pixels
        labels = names(root / "batches.meta.txt")
        batches, record, label_at = sorted(root.glob("data_batch_*.bin")) + sorted(root.glob("test_batch.bin")), 3073, 0
    elif (root / "fine_label_names.txt").is_file():  # CIFAR-100 binary: coarse, fine label, 3072 pixels
        labels = names(root / "fine_label_names.txt")
        batches, record, label_at = [p for p in (root / "train.bin", root / "test.bin") if p.is_file()], 3074, 1
    else:                                             # the Python versions
        meta_file = root / "batches.meta" if (root / "batches.meta").is_file() else root / "meta"
        meta = _load_cifar_pickle(meta_file)
        key = "label_names" if "label_names" in meta else "fine_label_names"
        labels = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]
        files = sorted(root.glob("data_batch_*")) + [p for p in (root / "test_batch", root / "train", root / "test")
                                                     if p.is_file()]
        for path in files:
            batch = _load_cifar_pickle(path)
            data = np.asarray(batch["data"], np.uint8)
            targets = batch.get("labels", batch.get("fine_labels"))
            for i, (flat, label) in enumerate(zip(data, targets)):
                yield _cifar_record(f"{path.name}/{i}", flat, labels[int(label)], size)
        return
    for path in batches:
        raw = np.fromfile(path, np.uint8)
        if raw.size % record:
            raise UserError(f"{path} is not a CIFAR binary batch (its size is not a multiple of {record} bytes)")
        for i, row in enumerate(raw.reshape(-1, record)):
            yield _cifar_record(f"{path.name}/{i}", row[record - 3072:], labels[int(row[label_at])], size)


# ----------------------------------------------------------------------------- WebDataset

def _caption_from_member(ext: str, data: bytes):
    if ext == "txt":
        return data
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return None
    if isinstance(value, dict):
        return next((value[k] for k in TEXT_FIELDS if k in value), None)
    return value if isinstance(value, str) else None


MAX_MEMBER_BYTES = 64 << 20  # a tar member larger than this is skipped unread: one member must not fill memory
SHARD_BROKEN = "corrupt or truncated shard"
IMAGE_MEMBERS, CAPTION_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp"), ("txt", "json")


class _StrictTarInfo(tarfile.TarInfo):
    """Raises ReadError for a header that breaks off, or is garbage, after the first member, where tarfile
    quietly takes it for the end of the archive: a shard cut off between members would otherwise lose
    its last samples uncounted (and its last sample, missing its caption, be counted under the wrong reason)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as error:
            raise tarfile.ReadError(f"broken header: {error}") from None


def _sample(key: str, sample: dict, problem: str | None) -> Record:
    image = next((sample[e] for e in IMAGE_MEMBERS if e in sample), None)
    caption = next((sample[e] for e in CAPTION_MEMBERS if e in sample), None)
    if problem or image is None:
        return Record(key, None, None, problem=problem or "no image")
    return Record(key, image, None if caption is None else [caption])


def _shard_records(shard: Path) -> Iterator[Record]:
    """The samples of one shard, read as a stream, one member at a time, none larger than MAX_MEMBER_BYTES
    (its header says how large it is: a larger one is passed over unread, and its sample skipped).
    Where the shard breaks off or is corrupt, the samples before are kept; the one being read is counted
    as lost under SHARD_BROKEN, the shard's name standing in when the break comes before any sample.
    What follows a break cannot be read, so cannot be counted."""
    cap = MAX_MEMBER_BYTES
    key, sample, problem = None, {}, None  # the sample being read; `problem`: why it cannot be used
    try:
        with tarfile.open(shard, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                member_key = f"{shard.name}/{directory}/{stem}"
                if member_key != key and key is not None:
                    yield _sample(key, sample, problem)
                    sample, problem = {}, None
                key = member_key
                if problem:  # its sample is skipped already: nothing more of it is read
                    continue
                # the header's size decides, so a huge member is never read (tarfile skips it); the read is
                # bounded as well, so no header can make it take more than the cap
                data = tar.extractfile(member).read(cap + 1) if member.size <= cap else b""
                if member.size > cap or len(data) > cap:
                    problem = f"member over {cap / (1 << 20):g} MiB"
                    continue
                ext = ext.lower()
                sample[ext] = _caption_from_member(ext, data) if ext in CAPTION_MEMBERS else data
    except (tarfile.TarError, EOFError):  # tarfile's errors for data that breaks off or does not decompress
        yield Record(key or shard.name, None, None, problem=SHARD_BROKEN)
    except OSError as error:  # the shard itself cannot be read
        yield Record(key or shard.name, None, None, problem=_read_error(error))
    else:
        if key is not None:
            yield _sample(key, sample, problem)


def read_webdataset(path: Path, size: int) -> Iterator[Record]:
    """WebDataset shards: members sharing a key (the name before the first dot) form one sample.
    Each shard is read as a stream, one member at a time (see _shard_records)."""
    for shard in [path] if path.is_file() else sorted(path.glob("*.tar")):
        yield from _shard_records(shard)


# ----------------------------------------------------------------------------- Hugging Face datasets / parquet

def _parquet_batches(file: Path):
    import pyarrow.parquet as pq
    yield from pq.ParquetFile(file).iter_batches(batch_size=256)


def parquet_split(file: Path) -> bool | None:
    """Whether a parquet file of a Hugging Face dataset is a held-out split, from its name (train-00000-of-00002,
    test-..., validation-...) or its folder's (data/train/...); None when neither says."""
    for name in (file.stem.split("-")[0], file.parent.name):
        if name in SPLITS:
            return SPLITS[name]
    return None


def _arrow_batches(path: Path):
    """(batch, held out?) of a parquet file, a folder of them, or a saved dataset (every split of a
    DatasetDict: train trained on, the others held out)."""
    import pyarrow as pa
    if path.is_file() and path.suffix == ".parquet":
        yield from ((batch, parquet_split(path)) for batch in _parquet_batches(path))
        return
    if (path / "dataset_dict.json").is_file():
        for split in json.loads((path / "dataset_dict.json").read_text()).get("splits", []):
            held = SPLITS.get(split, split != "train")
            yield from ((batch, held) for batch, _ in _arrow_batches(path / split))
        return
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        for file in parquet:
            yield from ((batch, parquet_split(file)) for batch in _parquet_batches(file))
        return
    for file in sorted(path.glob("*.arrow")):
        with open(file, "rb") as f:
            try:
                reader = pa.ipc.open_stream(f)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(f)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i), None
                continue
            yield from ((batch, None) for batch in reader)


def read_hf(path: Path, size: int, caption_column: str = "") -> Iterator[Record]:
    """A `datasets` dataset saved to disk, or parquet files: the image column (bytes, or a path) and
    the text column (`caption_column`, or the first of TEXT_FIELDS; a string or a list of strings),
    read a batch of rows at a time. Splits stay apart: test and validation rows are held out."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserError("reading Hugging Face datasets and parquet needs pyarrow: "
                        "pip install 'dreamlet[data]'") from None
    base = path if path.is_dir() else path.parent
    row = 0
    for batch, held in _arrow_batches(path):
        names = batch.schema.names
        image_column = next((n for n in IMAGE_FIELDS if n in names), None)
        text_column = caption_column if caption_column in names else next((n for n in TEXT_FIELDS if n in names), None)
        if caption_column and caption_column not in names:
            raise UserError(f"--caption-column {caption_column}: {path} has columns {', '.join(names)}")
        if image_column is None or text_column is None:
            raise UserError(f"{path} has columns {names}; dreamlet needs an image column ({', '.join(IMAGE_FIELDS)}) "
                            f"and a text column ({', '.join(TEXT_FIELDS)}, or --caption-column)")
        for image, text in zip(batch.column(image_column).to_pylist(), batch.column(text_column).to_pylist()):
            key = f"row {row}"
            row += 1
            if isinstance(image, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
                data, file = image.get("bytes"), image.get("path")
                if data is None and file:
                    data = _loader(base / file) if (base / file).is_file() else None
                image = data
            yield Record(key, image, text if isinstance(text, list) else [text],
                         problem=None if image is not None else "no image", heldout=held)


# ----------------------------------------------------------------------------- detection

READERS = {"imagefolder": read_imagefolder, "captions": read_captions_beside, "coco": read_coco,
           "cifar": read_cifar, "webdataset": read_webdataset, "hf": read_hf}
WITH_CAPTION_COLUMN = ("imagefolder", "hf")  # the formats whose rows have named columns (--caption-column)


def detect_format(path: Path) -> str:
    """The format of a dataset path, from the files it holds."""
    if path.is_file():
        if path.suffix == ".tar":
            return "webdataset"
        if path.suffix == ".parquet":
            return "hf"
        raise UserError(f"{path} is a file dreamlet cannot read as a dataset; give a folder, a .tar shard "
                        "or a .parquet file")
    names = {p.name for p in path.iterdir()}
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if names & {"dataset_dict.json", "dataset_info.json", "state.json"} or any(
            n.endswith(".parquet") and n != "metadata.parquet" for n in names):
        return "hf"
    if (path / "annotations").is_dir() and any((path / "annotations").glob("captions_*.json")):
        return "coco"
    if names & {"batches.meta.txt", "fine_label_names.txt", "batches.meta", "meta"} and \
            names & {"data_batch_1.bin", "train.bin", "data_batch_1", "train"}:
        return "cifar"
    if names & set(METADATA) or imagefolder_splits(path)[0][1] is not None:
        return "imagefolder"
    if any(p.name != "metadata.parquet" for p in path.rglob("*.parquet")):  # the Hub's data/train-*.parquet
        return "hf"
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*")):
        return "captions"
    raise UserError(f"cannot tell the format of {path}: no metadata.jsonl/csv, COCO annotations, CIFAR batches, "
                    f".tar shards, parquet or images found (see --format)")


def fingerprint(path: Path) -> list:
    """What the cache key depends on: every file's name, size and modification time."""
    files = [path] if path.is_file() else _files(path)
    return [(str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, int(f.stat().st_mtime))
            for f in files]
