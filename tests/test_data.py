"""Real captioned data: every user format, built in a temporary folder with the bad cases the
issue lists, loaded through the same cache; the built-in digits and emoji sets; `data inspect`."""
import csv
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from dreamlet.checkpoint import UserError
from dreamlet.cli import main
from dreamlet.data import load
from dreamlet.data.formats import detect_format


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMLET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def solid(rgb, size=(20, 12)) -> bytes:
    return encode(Image.new("RGB", size, rgb))


def bad_files() -> dict[str, bytes]:
    """Files every folder format must skip, each for its own reason."""
    good = solid((10, 200, 10))
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")  # 81 megapixels in a few kilobytes
    return {"corrupt.png": os.urandom(300), "truncated.png": good[: len(good) // 2], "zero.png": b"",
            "notes.jpg": b"this is text, not a picture", "bomb.png": bomb.getvalue()}


BAD_REASONS = {"not an image": 2, "corrupt or truncated image": 1, "empty file": 1, "decompression bomb": 1}


def odd_modes() -> dict[str, bytes]:
    """Images in modes that must be converted, not skipped."""
    cmyk = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")       # red in CMYK
    grey16 = Image.fromarray(np.full((16, 16), 65535 // 2, np.uint16))          # 16-bit grey, half way
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    palette.info["transparency"] = 0                                            # fully transparent
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))                                     # left half transparent
    return {"cmyk.jpg": cmyk, "grey16.png": encode(grey16), "palette.png": encode(palette, transparency=0),
            "rgba.png": encode(rgba)}


def test_imagefolder_jsonl_loads_good_pairs_and_counts_every_bad_one(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    lines = []
    for name, data in (odd_modes() | bad_files()).items():
        (root / name).write_bytes(data)
        lines.append(json.dumps({"file_name": name, "text": f"a picture called {name}"}))
    (root / "empty.png").write_bytes(solid((1, 2, 3)))
    (root / "badutf.png").write_bytes(solid((4, 5, 6)))
    (root / "twice.png").write_bytes(solid((7, 8, 9)))
    (root / "unlisted.png").write_bytes(solid((9, 9, 9)))
    lines += [json.dumps({"file_name": "empty.png", "text": "   "}),
              json.dumps({"file_name": "gone.png", "text": "a missing file"}),
              json.dumps({"file_name": "twice.png", "text": "the same entry"}),
              json.dumps({"file_name": "twice.png", "text": "the same entry"}),
              "{not json"]
    raw = "\n".join(lines).encode() + b'\n{"file_name": "badutf.png", "text": "caf\xe9 \xff"}\n'
    (root / "metadata.jsonl").write_bytes(raw)

    assert detect_format(root) == "imagefolder"
    data = load(str(root), size=16)
    assert data.meta["count"] == 5  # the four odd modes and one of the two identical entries
    assert data.skipped == dict(sorted((BAD_REASONS | {
        "empty caption": 1, "missing file": 1, "duplicate": 1, "bad metadata line": 1, "caption not UTF-8": 1,
        "no caption": 1}).items()))
    pictures = {c[0].split()[-1]: image for c, image in zip(data.all_captions, data.rows(range(data.meta["count"])))}
    assert pictures["cmyk.jpg"].reshape(-1, 3).mean(0) == pytest.approx([255, 0, 0], abs=3)
    assert pictures["grey16.png"].reshape(-1, 3).mean(0) == pytest.approx([127, 127, 127], abs=2)
    assert (pictures["palette.png"] == 255).all()                   # transparent -> the white background
    rgba = pictures["rgba.png"]
    assert (rgba[:, :6] == 255).all() and (rgba[:, 10:] == [255, 0, 0]).all()


def test_imagefolder_csv_and_captions_beside_images(tmp_path):
    root = tmp_path / "csv"
    root.mkdir()
    (root / "a.png").write_bytes(solid((255, 0, 0)))
    (root / "b.png").write_bytes(solid((0, 0, 255), size=(40, 40)))
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["file_name", "text"], ["a.png", "a red card"], ["b.png", "a blue card"], ["c.png", "gone"]])
    data = load(str(root), size=8)
    assert sorted(c[0] for c in data.all_captions) == ["a blue card", "a red card"]
    assert data.skipped == {"missing file": 1}

    beside = tmp_path / "beside"
    (beside / "sub").mkdir(parents=True)
    (beside / "sub" / "one.jpg").write_bytes(encode(Image.new("RGB", (30, 20), (0, 255, 0)), "JPEG"))
    (beside / "sub" / "one.txt").write_text("  a green\nrectangle  ")
    (beside / "two.png").write_bytes(solid((0, 0, 0)))
    assert detect_format(beside) == "captions"
    data = load(str(beside), size=8)
    assert data.all_captions == [["a green rectangle"]]
    assert data.skipped == {"no caption": 1}
    assert np.load(data.directory / "sizes.npy").tolist() == [[30, 20]]


def test_coco_captions_several_per_image(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    (root / "train2017" / "000001.jpg").write_bytes(encode(Image.new("RGB", (64, 48), (200, 0, 0)), "JPEG"))
    (root / "train2017" / "000002.jpg").write_bytes(encode(Image.new("RGB", (48, 64), (0, 0, 200)), "JPEG"))
    annotations = {
        "images": [{"id": 1, "file_name": "000001.jpg"}, {"id": 2, "file_name": "000002.jpg"},
                   {"id": 3, "file_name": "000003.jpg"}],
        "annotations": [{"image_id": 1, "caption": "A red wall."}, {"image_id": 1, "caption": "Something red"},
                        {"image_id": 2, "caption": "A blue sky"}, {"image_id": 2, "caption": ""},
                        {"image_id": 3, "caption": "never downloaded"}]}
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(annotations))
    assert detect_format(root) == "coco"
    data = load(str(root), size=16)
    assert data.all_captions == [["A red wall.", "Something red"], ["A blue sky"]]  # the empty caption dropped
    assert data.skipped == {"missing file": 1}
    captions = {data.batch(i, 1)[1][0] for i in range(40)}
    assert {"A red wall.", "Something red", "A blue sky"} == captions  # each caption gets its turn


def cifar_rows(colors) -> np.ndarray:
    """CIFAR's layout: 1024 red, then 1024 green, then 1024 blue values per image."""
    return np.stack([np.repeat(np.asarray(c, np.uint8), 1024) for c in colors])


def test_cifar10_and_cifar100_binary(tmp_path):
    ten = tmp_path / "cifar-10-batches-bin"
    ten.mkdir()
    (ten / "batches.meta.txt").write_text("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n")
    rows = cifar_rows([(255, 0, 0), (0, 0, 255)])
    np.concatenate([np.asarray([[3], [0]], np.uint8), rows], 1).tofile(ten / "data_batch_1.bin")
    data = load(str(ten), size=32)
    assert data.meta["count"] == 2
    assert "a photo of a cat" in data.all_captions[0] and "a photo of an airplane" in data.all_captions[1]
    images = data.rows([0, 1])
    assert (images[0] == [255, 0, 0]).all() and (images[1] == [0, 0, 255]).all()

    hundred = tmp_path / "cifar-100-binary"
    hundred.mkdir()
    (hundred / "fine_label_names.txt").write_text("\n".join(f"class_{i}" for i in range(100)) + "\n")
    (hundred / "coarse_label_names.txt").write_text("\n".join(f"group_{i}" for i in range(20)) + "\n")
    np.concatenate([np.asarray([[1, 42]], np.uint8), cifar_rows([(0, 255, 0)])], 1).tofile(hundred / "train.bin")
    data = load(str(hundred), size=16)
    assert data.all_captions[0][0] == "a photo of a class 42" and data.rows([0]).shape == (1, 16, 16, 3)


class Boom:
    def __reduce__(self):
        return (os.system, ("touch BOOM",))


def test_cifar_python_version_without_running_pickle_code(tmp_path, capsys, monkeypatch):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"automobile", b"bird", b"cat"]}, 2))
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [2, 1],
             b"data": cifar_rows([(0, 255, 0), (9, 9, 9)]), b"filenames": [b"a.png", b"b.png"]}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, 2))
    data = load(str(root), size=32)
    assert [c[0] for c in data.all_captions] == ["a photo of a bird", "a photo of an automobile"]
    assert (data.rows([0])[0] == [0, 255, 0]).all()

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat"]}, 2))
    (evil / "data_batch_1").write_bytes(pickle.dumps({b"data": Boom()}, 2))
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", str(evil)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("dreamlet: error: ") and "Traceback" not in err
    assert "not a CIFAR batch (refusing to load posix.system)" in errors[0]
    assert not (tmp_path / "BOOM").exists()


def add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_are_streamed(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        add(tar, "s/0001.png", solid((255, 0, 0)))
        add(tar, "s/0001.txt", b"a red thing")
        add(tar, "s/0002.jpg", encode(Image.new("RGB", (8, 8), (0, 0, 255)), "JPEG"))
        add(tar, "s/0002.json", json.dumps({"caption": "a blue thing", "width": 8}).encode())
        add(tar, "s/0003.png", solid((0, 255, 0)))                     # no caption
        add(tar, "s/0004.png", os.urandom(100))                        # not an image
        add(tar, "s/0004.txt", b"noise")
    with tarfile.open(root / "shard-001.tar", "w") as tar:
        add(tar, "0005.png", solid((0, 255, 255)))
        add(tar, "0005.txt", b"a cyan thing")
        add(tar, "0006.png", solid((255, 255, 0)))
        add(tar, "0006.txt", b"a yellow thing")
    whole = (root / "shard-001.tar").read_bytes()
    (root / "shard-002.tar").write_bytes(whole[:2048 + 700])           # cut off inside its second sample
    assert detect_format(root) == "webdataset"
    data = load(str(root), size=8)
    assert sorted(c[0] for c in data.all_captions) == ["a blue thing", "a cyan thing", "a red thing", "a yellow thing"]
    assert data.skipped == {"corrupt or truncated shard": 1, "duplicate": 1, "no caption": 1, "not an image": 1}
    single = load(str(root / "shard-000.tar"), size=8)                 # one shard on its own
    assert single.meta["count"] == 2


def sample_shard(count: int) -> bytes:
    """An uncompressed shard of `count` samples (png + txt), each member one header block and one data block:
    sample i starts at byte 2048 * i, its caption's header at 2048 * i + 1024."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(count):
            add(tar, f"s/{i}.png", solid((40 * i, 0, 0)))
            add(tar, f"s/{i}.txt", f"picture {i}".encode())
    return buffer.getvalue()


def test_webdataset_member_over_the_cap_is_skipped_unread(tmp_path, monkeypatch):
    from dreamlet.data import formats
    monkeypatch.setattr(formats, "MAX_MEMBER_BYTES", 1 << 20)
    extracted = []
    extractfile = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda tar, member: extracted.append(member.name)
                        or extractfile(tar, member))
    shard = tmp_path / "big.tar"                                       # gzip inside, as shards often are
    with tarfile.open(shard, "w:gz") as tar:
        add(tar, "0.png", solid((255, 0, 0)))
        add(tar, "0.txt", b"a red thing")
        add(tar, "1.png", bytes((1 << 20) + 1))                        # one byte over the cap
        add(tar, "1.txt", b"too big to read")
        add(tar, "2.png", solid((0, 0, 255)))
        add(tar, "2.txt", b"a blue thing")
    data = load(str(shard), size=8)
    assert sorted(c[0] for c in data.all_captions) == ["a blue thing", "a red thing"]  # the shard read on past it
    assert data.skipped == {"member over 1 MiB": 1}
    assert "1.png" not in extracted and "1.txt" not in extracted      # neither member of that sample was read


def test_webdataset_shard_cut_off_anywhere_counts_the_sample_it_lost(tmp_path):
    from dreamlet.data.formats import read_webdataset
    whole = sample_shard(4)
    garbage = bytearray(whole)
    garbage[4096:4608] = b"x" * 512                                    # sample 2's first header is junk
    cuts = {"in-data.tar": whole[:4096 + 700],                         # inside sample 2's picture
            "in-header.tar": whole[:4096 + 1024 + 100],                # inside the header of sample 2's caption
            "on-boundary.tar": whole[:6144],                           # after sample 2, with no end of archive
            "garbage.tar": bytes(garbage)}
    for name, data in cuts.items():
        root = tmp_path / name.removesuffix(".tar")
        root.mkdir()
        (root / name).write_bytes(data)
        loaded = load(str(root), size=8)
        kept = 2 if name != "garbage.tar" else 1                       # junk where sample 2 begins: 1 is being read
        assert sorted(c[0] for c in loaded.all_captions) == [f"picture {i}" for i in range(kept)], name
        assert loaded.skipped == {"corrupt or truncated shard": 1}, name
        lost = [r for r in read_webdataset(root, 8) if r.problem]
        assert [r.key for r in lost] == [f"{name}/s/{kept}"], name     # the lost sample, named
    (tmp_path / "not-a-tar").mkdir()
    (tmp_path / "not-a-tar" / "x.tar").write_bytes(b"not a tar at all" * 40)  # broken before any sample
    assert [(r.key, r.problem) for r in read_webdataset(tmp_path / "not-a-tar", 8)] == [
        ("x.tar", "corrupt or truncated shard")]


def test_metadata_cannot_name_files_outside_the_data_folder(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "secret.png").write_bytes(solid((1, 1, 1)))
    (outside / "real.png").write_bytes(solid((2, 2, 2)))
    (outside / "linked.png").write_bytes(solid((3, 3, 3)))
    read = []
    read_bytes = type(tmp_path).read_bytes
    monkeypatch.setattr(type(tmp_path), "read_bytes", lambda path: read.append(path.name) or read_bytes(path))

    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    (root / "good.png").write_bytes(solid((255, 0, 0)))
    (root / "linked").symlink_to(outside)                              # a folder the user linked in still reads
    rows = [{"file_name": "good.png", "text": "a good one"}, {"file_name": "sub/../good.png", "text": "good again"},
            {"file_name": "linked/linked.png", "text": "through a link"},
            {"file_name": "../secret.png", "text": "climbs out"},
            {"file_name": str(outside / "real.png"), "text": "absolute, outside"},
            {"file_name": "sub/../../secret.png", "text": "climbs out too"}, {"file_name": "a\0b.png", "text": "nul"}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load(str(root), size=8)
    assert sorted(c[0] for c in data.all_captions) == ["a good one", "good again", "through a link"]
    assert data.skipped == {"path outside the data folder": 3, "bad metadata line": 1}

    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "train").mkdir()
    (coco / "train" / "1.png").write_bytes(solid((0, 255, 0)))
    images = [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "../secret.png"},
              {"id": 3, "file_name": str(outside / "real.png")}]
    annotations = [{"image_id": i, "caption": f"picture {i}"} for i in (1, 2, 3)]
    annotation_file = coco / "annotations" / "captions_train.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations}))
    data = load(str(coco), size=8)
    assert data.all_captions == [["picture 1"]] and data.skipped == {"path outside the data folder": 2}
    assert "secret.png" not in read and "real.png" not in read          # never read, by either reader


def test_a_file_that_cannot_be_read_is_counted_by_what_happened(tmp_path, monkeypatch):
    root = tmp_path / "folder"
    root.mkdir()
    for name in ("ok", "locked", "gone"):
        (root / f"{name}.png").write_bytes(solid((9, 9, 9) if name == "ok" else (200, 0, 0)))
        (root / f"{name}.txt").write_text(f"the {name} picture")
    errors = {"locked.png": PermissionError(13, "Permission denied"), "gone.png": FileNotFoundError(2, "gone")}
    read_bytes = type(root).read_bytes

    def failing(path):
        if path.name in errors:
            raise errors[path.name]
        return read_bytes(path)
    monkeypatch.setattr(type(root), "read_bytes", failing)
    data = load(str(root), size=8)
    assert data.all_captions == [["the ok picture"]]
    assert data.skipped == {"missing file": 1, "unreadable (permission denied)": 1}


def test_decoding_lets_running_out_of_memory_through(monkeypatch):
    from dreamlet.data.decode import Skip, decode_image
    for error, reason in ((OSError("image file is truncated"), "corrupt or truncated image"),
                          (SyntaxError("not a TIFF file"), "corrupt or truncated image"), (MemoryError(), None)):
        def fail(*args, **kwargs):
            raise error
        monkeypatch.setattr(Image, "open", fail)
        with pytest.raises(Skip if reason else MemoryError) as caught:
            decode_image(b"some bytes", 8)
        assert reason is None or str(caught.value) == reason


def test_json_nested_too_deep_is_a_bad_line_not_a_crash(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    (root / "a.png").write_bytes(solid((255, 0, 0)))
    deep = "[" * 100_000                                                 # json's parser gives up: RecursionError
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "fine"}) + "\n" + deep + "\n")
    data = load(str(root), size=8)
    assert data.all_captions == [["fine"]] and data.skipped == {"bad metadata line": 1}
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "deep.tar", "w") as tar:
        add(tar, "0.png", solid((0, 255, 0)))
        add(tar, "0.json", b"[" * 100_000)
        add(tar, "1.png", solid((0, 0, 255)))
        add(tar, "1.json", b'{"caption": "still read"}')
    data = load(str(shards), size=8)
    assert data.all_captions == [["still read"]] and data.skipped == {"no caption": 1}


def test_hugging_face_saved_dataset_and_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    table = pa.table({"image": [{"bytes": solid((255, 0, 0)), "path": None}, {"bytes": None, "path": "pic.png"},
                                {"bytes": b"", "path": None}],
                      "text": ["a red card", "from a path", "an empty file"]})
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "pic.png").write_bytes(solid((0, 0, 255)))
    with pa.ipc.new_stream(saved / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    (saved / "dataset_info.json").write_text("{}")
    (saved / "state.json").write_text("{}")
    assert detect_format(saved) == "hf"
    data = load(str(saved), size=8)
    assert [c[0] for c in data.all_captions] == ["a red card", "from a path"]
    assert data.skipped == {"empty file": 1}

    listed = pa.table({"jpg": [solid((0, 255, 0))], "captions": [["one", "two"]]})
    pq.write_table(listed, tmp_path / "train.parquet")
    data = load(str(tmp_path / "train.parquet"), size=8)
    assert data.all_captions == [["one", "two"]]


def test_cache_is_built_once_and_batches_are_seeded(tmp_path, cache):
    root = tmp_path / "folder"
    root.mkdir()
    for i in range(20):
        (root / f"{i:02d}.png").write_bytes(solid((10 * i, 0, 0)))
        (root / f"{i:02d}.txt").write_text(f"picture {i}")
    first = load(str(root), size=8, seed=3)
    built = (first.directory / "meta.json").stat().st_mtime_ns
    again = load(str(root), size=8, seed=3)
    assert again.directory == first.directory and (again.directory / "meta.json").stat().st_mtime_ns == built
    assert first.array().shape == (20, 8, 8, 3)
    a, b = first.batch(5, 7), again.batch(5, 7)
    assert (a[0] == b[0]).all() and a[1] == b[1]
    epoch = {first.batch(i, 1)[1][0] for i in range(len(first))}
    assert len(epoch) == len(first)                                    # each training picture once per epoch
    (root / "20.png").write_bytes(solid((1, 1, 1)))
    (root / "20.txt").write_text("a new picture")
    assert load(str(root), size=8).directory != first.directory        # a changed folder is cached anew


def test_nothing_usable_is_one_line(tmp_path, capsys):
    root = tmp_path / "empty_captions"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    (root / "a.txt").write_text("")
    with pytest.raises(UserError, match="no usable pictures"):
        load(str(root))
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "no such dataset" in capsys.readouterr().err


def test_digits_builtin():
    data = load("digits", size=16)
    assert data.meta["count"] == 1797 and 140 < len(data.heldout_index) < 220
    assert "a handwritten seven" in {c for options in data.all_captions for c in options}
    images, captions = data.heldout(4)
    assert images.shape == (4, 16, 16, 3) and images.max() == 255 and images.min() < 60  # dark ink on white


def test_emoji_builtin_or_a_clear_message(monkeypatch):
    from dreamlet.data import builtin
    try:
        builtin.emoji_font()
    except UserError:
        pytest.skip("the Noto Color Emoji font is not installed")
    data = load("emoji", size=16)
    names = {options[0] for options in data.all_captions}
    assert data.meta["count"] > 3000 and "grinning face" in names
    held = {data.all_captions[r][0] for r in data.heldout_index}
    trained = {data.all_captions[r][0] for r in data.train_index}
    assert 100 < len(held) < 300 and not held & trained
    assert set(data.skipped) <= {"not in the font"}
    monkeypatch.delenv("DREAMLET_EMOJI_FONT", raising=False)
    monkeypatch.setattr(builtin, "EMOJI_FONTS", ["/nowhere/NotoColorEmoji.ttf"])
    with pytest.raises(UserError, match="apt-get install fonts-noto-color-emoji"):
        builtin.emoji_font()


def test_inspect_and_train_on_a_folder_through_the_cli(tmp_path, capsys, monkeypatch):
    root = tmp_path / "mine"
    root.mkdir()
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)] * 4):
        (root / f"{i}.png").write_bytes(solid(rgb, size=(30 + i, 20)))
        (root / f"{i}.txt").write_text(f"card number {i} in colour {rgb}")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "broken.txt").write_text("a broken file")
    sheet = tmp_path / "sheet.png"
    assert main(["data", "inspect", str(root), "--size", "16", "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "12 usable" in out and "skipped:   1 (1 not an image)" in out and "width 30-41" in out
    assert Image.open(sheet).size[0] == 8 * 128
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--size", "16", "--steps", "3", "--out", str(run), "--preset", "tiny",
                 "--batch-size", "4", "--sample-every", "2", "--checkpoint-every", "0"]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["train"]["data"] == str(root)
    assert (run / "progress" / "step_000002.png").is_file()
    # A folder this small holds nothing out, so asking for held-out prompts is a one-line error.
    assert main(["sample", "--model", str(run / "model"), "--heldout", "4", "--out", str(tmp_path / "s")]) == 2
    assert "holds nothing out" in capsys.readouterr().err


def test_train_on_digits_then_sample_its_heldout_captions_as_a_grid(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "--data", "digits", "--size", "16", "--steps", "2", "--out", str(run), "--preset", "tiny",
                 "--batch-size", "4", "--sample-every", "0", "--checkpoint-every", "0"]) == 0
    grid = tmp_path / "grid.png"
    assert main(["sample", "--model", str(run / "model"), "--heldout", "5", "--steps", "2", "--grid", str(grid),
                 "--out", str(tmp_path / "samples")]) == 0
    records = [json.loads(line) for line in (tmp_path / "samples" / "index.jsonl").read_text().splitlines()]
    data = load("digits", size=16)
    assert [r["prompt"] for r in records] == data.heldout(5)[1]
    assert Image.open(grid).size == (8 * 128, 128 + 40)


# ----------------------------------------------------------------------------- --fit crop | pad

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def banner() -> Image.Image:
    """64 x 16: a red left half and a blue right half on white (a 2 px white margin all round)."""
    image = Image.new("RGB", (64, 16), WHITE)
    image.paste(RED, (2, 2, 32, 14))
    image.paste(BLUE, (32, 2, 62, 14))
    return image


def columns_of(picture: np.ndarray, rgb) -> np.ndarray:
    """The columns of the middle row within 40 levels of the colour."""
    return np.flatnonzero((np.abs(picture[picture.shape[0] // 2].astype(int) - rgb) <= 40).all(axis=1))


def test_pad_keeps_a_wide_banner_whole_and_crop_cuts_its_ends(tmp_path):
    from dreamlet.data.cache import cache_key
    from dreamlet.data.formats import fingerprint
    root = tmp_path / "banners"
    root.mkdir()
    (root / "flag.png").write_bytes(encode(banner()))
    (root / "flag.txt").write_text("a red and blue banner")
    crop, pad = load(str(root), size=32, fit="crop"), load(str(root), size=32, fit="pad")
    cropped, padded = crop.rows([0])[0], pad.rows([0])[0]

    # crop: the centre 16 x 16 of the banner (8 px of each colour's 30) scaled up, red and blue to the edges:
    # the outer parts of both colours and the white ends are cut away
    assert columns_of(cropped, RED).min() == 0 and columns_of(cropped, BLUE).max() == 31
    assert len(columns_of(cropped, RED)) + len(columns_of(cropped, BLUE)) >= 30
    assert (cropped[16] != 255).any(axis=1).all()
    # pad: the whole banner at 32 x 8 in rows 12-19, both colours to their ends, white rows above and below
    assert len(columns_of(padded, RED)) >= 14 and len(columns_of(padded, BLUE)) >= 14
    assert columns_of(padded, RED).min() <= 2 and columns_of(padded, BLUE).max() >= 29
    assert (padded[:12] == 255).all() and (padded[20:] == 255).all()
    assert (padded[12:20] != 255).any()

    # separate caches, each saying its fit; the crop cache has the name it had before the fit was a choice
    assert crop.directory != pad.directory and "-32px-pad-" in pad.directory.name
    assert (crop.fit, pad.fit) == ("crop", "pad")
    assert json.loads((pad.directory / "meta.json").read_text())["fit"] == "pad"
    source = dict(name=root.name, format="captions", path=str(root.resolve()))
    assert crop.directory.name == f"banners-32px-{cache_key(source, fingerprint(root.resolve()), 32)}"
    with pytest.raises(UserError, match="--fit squash: choose one of: crop, pad"):
        load(str(root), size=32, fit="squash")


def test_pad_colour_is_the_background_of_an_opaque_picture():
    from dreamlet.data.decode import fit_square
    green = Image.new("RGB", (12, 40), (20, 120, 40))                # tall, on a flat green background
    green.paste((250, 250, 0), (3, 10, 9, 30))
    padded = fit_square(green, 32, "pad")
    assert padded.shape == (32, 32, 3) and (padded[:, :11] == (20, 120, 40)).all()
    assert (padded[:, 21:] == (20, 120, 40)).all()
    assert (np.abs(padded[16, 16].astype(int) - (250, 250, 0)) <= 30).all()
    rng = np.random.default_rng(0)                                  # a busy, dark border: a photo -> black bars
    photo = Image.fromarray(rng.integers(0, 110, (20, 60, 3), dtype=np.uint8))
    assert (fit_square(photo, 30, "pad")[:10] == 0).all()
    light = Image.fromarray(rng.integers(150, 256, (20, 60, 3), dtype=np.uint8))
    assert (fit_square(light, 30, "pad")[:10] == 255).all()


def test_transparent_pictures_pad_onto_the_background(tmp_path):
    sticker = Image.new("RGBA", (48, 24), (0, 0, 0, 0))               # transparent *black*: the edges read as black
    sticker.paste((255, 0, 0, 255), (16, 4, 32, 20))
    palette = Image.new("P", (24, 48), 0)                              # tall, index 0 black and transparent
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (4, 16, 20, 32))
    root = tmp_path / "stickers"
    root.mkdir()
    (root / "sticker.png").write_bytes(encode(sticker))
    (root / "sticker.txt").write_text("a red square sticker")
    (root / "palette.png").write_bytes(encode(palette, transparency=0))
    (root / "palette.txt").write_text("a blue square sticker")
    data = load(str(root), size=32, fit="pad")
    pictures = {c[0]: image for c, image in zip(data.all_captions, data.rows(range(data.meta["count"])))}
    red, blue = pictures["a red square sticker"], pictures["a blue square sticker"]
    assert (red[:8] == 255).all() and (red[24:] == 255).all()         # padding rows: white
    assert (red[8:24, :8] == 255).all() and (red[8:24, 24:] == 255).all()  # transparent pixels: white too
    assert (blue[:, :8] == 255).all() and (blue[:, 24:] == 255).all() and (blue[:8] == 255).all()
    assert (np.abs(red[13:19, 13:19].astype(int) - RED) <= 10).all()
    assert (np.abs(blue[13:19, 13:19].astype(int) - BLUE) <= 10).all()


def test_square_pictures_are_the_same_with_either_fit(tmp_path):
    root = tmp_path / "squares"
    root.mkdir()
    rng = np.random.default_rng(1)
    pictures = odd_modes() | {"noise.png": encode(Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8))),
                              "small.jpg": encode(Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)), "JPEG"),
                              "same.png": encode(Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)))}
    for name, data in pictures.items():
        (root / name).write_bytes(data)
        (root / name).with_suffix(".txt").write_text(f"square {name}")
    crop, pad = load(str(root), size=32, fit="crop"), load(str(root), size=32, fit="pad")
    assert crop.meta["count"] == pad.meta["count"] == 7 and crop.directory != pad.directory
    assert crop.all_captions == pad.all_captions and (crop.array() == pad.array()).all()
    digits_crop, digits_pad = load("digits", size=16), load("digits", size=16, fit="pad")  # built-in: square already
    assert (digits_crop.array() == digits_pad.array()).all()


def test_fit_through_the_cli_inspect_train_and_resume(tmp_path, capsys):
    root = tmp_path / "flags"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.png").write_bytes(encode(banner().rotate(90 * (i % 2), expand=True)))
        (root / f"{i}.txt").write_text(f"banner {i}")
    sheets = {fit: tmp_path / f"{fit}.png" for fit in ("crop", "pad")}
    for fit, sheet in sheets.items():
        assert main(["data", "inspect", str(root), "--fit", fit, "--sheet", str(sheet), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["fit"] == fit and report["not_square"] == 6 and ("-pad-" in report["cache"]) == (fit == "pad")
    assert (np.asarray(Image.open(sheets["crop"])) != np.asarray(Image.open(sheets["pad"]))).any()
    assert main(["data", "inspect", str(root), "--fit", "pad", "--sheet", str(sheets["pad"])]) == 0
    assert "fit:       pad: 6 of 6 pictures not square, padded" in capsys.readouterr().out
    assert main(["data", "inspect", str(root), "--fit", "squash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'squash'" in err[0]

    run = tmp_path / "run"
    tiny = ["--data", str(root), "--size", "16", "--out", str(run), "--preset", "tiny", "--batch-size", "4",
            "--sample-every", "0", "--checkpoint-every", "0"]
    assert main(["train", *tiny, "--steps", "2", "--fit", "pad"]) == 0
    assert json.loads((run / "model" / "config.json").read_text())["train"]["fit"] == "pad"
    assert main(["train", *tiny, "--steps", "3", "--resume"]) == 2   # the default, crop, is not what it trained with
    assert "with --fit pad; resume with the same --data, --size, --fit and --caption-column" in capsys.readouterr().err
    assert main(["train", *tiny, "--steps", "3", "--resume", "--fit", "pad"]) == 0
    state_file = run / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["step"] == 3
    del state["train"]["fit"]                                          # as saved before the fit was a choice
    state_file.write_text(json.dumps(state))
    assert main(["train", *tiny, "--steps", "4", "--resume", "--fit", "pad"]) == 2
    assert "with --fit crop" in capsys.readouterr().err
    assert main(["train", *tiny, "--steps", "3", "--resume"]) == 0   # resumes as crop (at its step: nothing to do)


def test_imagefolder_splits_metadata_parquet_and_caption_column(tmp_path):
    """Hugging Face's imagefolder with train/ and test/ folders (test is held out, not trained on),
    metadata.parquet, and --caption-column choosing which column is the caption."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    root = tmp_path / "hub"
    for split, count in (("train", 6), ("test", 2)):
        (root / split).mkdir(parents=True)
        rows = []
        for i in range(count):
            (root / split / f"{i}.png").write_bytes(solid((40 * i, 200, 10)))
            rows.append({"file_name": f"{i}.png", "text": f"{split} picture {i}", "blip": f"a short {split} {i}"})
        if split == "train":
            pq.write_table(pa.Table.from_pylist(rows), root / split / "metadata.parquet")
        else:
            (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "test" / "stray.png").write_bytes(solid((1, 2, 3)))  # listed nowhere: no caption
    assert detect_format(root) == "imagefolder"
    data = load(str(root), size=8)
    train = sorted(data.all_captions[i][0] for i in data.train_index)
    held = sorted(data.all_captions[i][0] for i in data.heldout_index)
    assert train == [f"train picture {i}" for i in range(6)] and held == ["test picture 0", "test picture 1"]
    assert data.skipped == {"no caption": 1}
    other = load(str(root), size=8, caption_column="blip")
    assert sorted(c[0] for c in other.all_captions) == sorted([f"a short train {i}" for i in range(6)]
                                                              + ["a short test 0", "a short test 1"])
    assert other.directory != data.directory  # a cache of its own
    with pytest.raises(UserError, match="--caption-column is for imagefolder and hf data, not captions"):
        load(str(root / "train"), size=8, format="captions", caption_column="blip")


def test_parquet_splits_stay_apart_and_a_missing_caption_column_is_named(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    (tmp_path / "data").mkdir()
    for split, count in (("train", 4), ("test", 2)):
        table = pa.table({"image": [{"bytes": solid((50 * i, 0, 0)), "path": None} for i in range(count)],
                          "text": [f"{split} {i}" for i in range(count)], "alt": [f"alt {split} {i}" for i in range(count)]})
        pq.write_table(table, tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    data = load(str(tmp_path), size=8)
    assert sorted(data.all_captions[i][0] for i in data.heldout_index) == ["test 0", "test 1"]
    assert sorted(data.all_captions[i][0] for i in data.train_index) == [f"train {i}" for i in range(4)]
    assert sorted(c[0] for c in load(str(tmp_path), size=8, caption_column="alt").all_captions)[0] == "alt test 0"
    with pytest.raises(UserError, match="--caption-column title: .* has columns image, text, alt"):
        load(str(tmp_path), size=8, caption_column="title")
