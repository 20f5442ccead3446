"""Reliability: a stopped or crashed run resumes bit for bit, checkpoints survive SIGKILL, damaged
model files are refused in one line without unpickling anything, and training logs what it does."""
import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dreamlet
from dreamlet.checkpoint import Interrupted, UserError
from dreamlet.cli import main
from dreamlet.models import get_family

TINY = dict(preset="tiny", batch_size=4, seed=1, size=16, tokenizer_captions=500)
CLI_TINY = ["--preset", "tiny", "--batch-size", "4", "--size", "16", "--sample-every", "0"]


def assert_same_tensors(a_path: Path, b_path: Path) -> None:
    a, b = load_file(a_path), load_file(b_path)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def log_rows(run: Path, columns=("step", "loss", "lr", "grad_norm")) -> list[tuple]:
    with open(run / "train_log.csv", newline="") as f:
        return [tuple(row[c] for c in columns) for row in csv.DictReader(f)]


def saved_step(run: Path) -> int:
    return json.loads((run / "checkpoint" / "state.json").read_text())["step"]


# -- exact resume --------------------------------------------------------------------------------

FIRST_STAGES = {"dalle": ("vqvae", "tokenizer"), "latent-diffusion": ("autoencoder", "autoencoder")}


@pytest.mark.parametrize("family", ["diffusion", "gan", "dalle", "latent-diffusion"])
def test_a_stopped_run_resumes_bit_for_bit(family, tmp_path, monkeypatch):
    """Stopped at step 6 of 12 and resumed, with checkpoints and progress grids on the way, a run
    ends with the same weights, EMA, optimizer moments and random state as one that never stopped
    and drew no grid: everything is restored, and drawing a grid takes nothing from training's
    random stream."""
    config = dreamlet.TrainConfig(model=family, steps=12, log_every=3, **TINY)
    split = dataclasses.replace(config, out=str(tmp_path / "split"), checkpoint_every=4, sample_every=5)
    straight = dataclasses.replace(config, out=str(tmp_path / "straight"), checkpoint_every=0, sample_every=0)

    def stop_at_6(progress):
        if progress.step == 6:
            progress.stop()

    if family in FIRST_STAGES:  # also stop it in its first stage (SIGTERM at its 5th step)
        first, folder = FIRST_STAGES[family]
        tokenizer_model = get_family(first).model
        real_loss, calls = tokenizer_model.loss, []

        def loss_then_sigterm(self, *args):
            calls.append(1)
            if len(calls) == 5:
                signal.raise_signal(signal.SIGTERM)
            return real_loss(self, *args)

        monkeypatch.setattr(tokenizer_model, "loss", loss_then_sigterm)
        with pytest.raises(Interrupted) as stopped:
            dreamlet.train(split, quiet=True)
        assert stopped.value.exit_code == 128 + signal.SIGTERM
        assert str(stopped.value).endswith(f"--resume --out {split.out}")  # the whole command, not its stage
        assert json.loads((tmp_path / "split" / folder / "checkpoint" / "state.json").read_text())["step"] == 5
        monkeypatch.setattr(tokenizer_model, "loss", real_loss)
        split = dataclasses.replace(split, resume=True)

    dreamlet.train(split, callback=stop_at_6, quiet=True)
    assert saved_step(tmp_path / "split") == 6
    dreamlet.train(dataclasses.replace(split, resume=True), quiet=True)
    dreamlet.train(straight, quiet=True)

    a, b = tmp_path / "split", tmp_path / "straight"
    assert saved_step(a) == saved_step(b) == 12
    assert_same_tensors(a / "model" / "model.safetensors", b / "model" / "model.safetensors")
    assert_same_tensors(a / "checkpoint" / "state.safetensors", b / "checkpoint" / "state.safetensors")
    if family in FIRST_STAGES:
        folder = FIRST_STAGES[family][1]
        assert_same_tensors(a / folder / "model" / "model.safetensors", b / folder / "model" / "model.safetensors")
    assert sorted(p.name for p in (a / "progress").glob("*.png")) == ["step_000005.png", "step_000010.png"]
    # the log reads as if the run had never stopped: one row per logged step, the same numbers
    assert log_rows(a) == log_rows(b)
    assert [row[0] for row in log_rows(a)] == ["3", "6", "9", "12"]


def test_the_caption_tokenizer_is_the_same_in_every_process():
    """Its ids decide which embedding row each word gets: tokenizers' own trainer numbered tokens in
    hash-map order, so the same --seed gave another model from one process to the next."""
    code = ("from dreamlet.data.shapes import ShapesDataset; from dreamlet.text.tokenizer import CaptionTokenizer; "
            "print(CaptionTokenizer.train(ShapesDataset(32, seed=0).captions(3000)).tokenizer.to_str())")
    first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
                     for _ in range(2))
    assert first == second and '"below"' in first


# -- checkpoints that survive a crash --------------------------------------------------------------

# A training run that hangs, and says so in a file, inside its second checkpoint save: while writing
# into the temporary directory, or between moving the old checkpoint aside and the new one in.
HANG_IN_SAVE = """
import os, sys, time
from pathlib import Path
import torch
import dreamlet.training as training
from dreamlet.cli import main

ready, where, saves = Path(sys.argv[1]), sys.argv[2], []
torch.set_num_threads(int(sys.argv[3]))  # as in the test's process: sums split across threads round differently
real_write, real_replace = training.write_dir_atomically, os.replace

def hang():
    ready.touch()
    time.sleep(600)

def write_dir_atomically(target, write):
    saves.append(Path(target).name)
    if saves.count("checkpoint") == 2 and Path(target).name == "checkpoint" and where == "writing":
        return real_write(target, lambda tmp: (write(tmp), hang()))
    return real_write(target, write)

def replace(source, target):
    real_replace(source, target)
    if saves.count("checkpoint") == 2 and Path(target).name == ".checkpoint.old" and where == "swapping":
        hang()

training.write_dir_atomically, os.replace = write_dir_atomically, replace
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize("where", ["writing", "swapping"])
def test_sigkill_while_saving_keeps_the_previous_checkpoint(where, tmp_path):
    out, ready = tmp_path / "run", tmp_path / "ready"
    args = ["train", *CLI_TINY, "--checkpoint-every", "3", "--steps", "9", "--out", str(out)]
    child = subprocess.Popen([sys.executable, "-c", HANG_IN_SAVE, str(ready), where, str(torch.get_num_threads()), *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert child.poll() is None, child.stderr.read()
            assert time.time() < deadline, "the child never reached its second checkpoint"
            time.sleep(0.05)
        child.kill()  # SIGKILL: no handler, no finally
    finally:
        child.wait()
    # the step-3 checkpoint survives: in place, or moved aside by the unfinished swap
    kept = out / ("checkpoint" if where == "writing" else ".checkpoint.old")
    assert json.loads((kept / "state.json").read_text())["step"] == 3
    assert (out / "checkpoint").exists() == (where == "writing")
    assert dreamlet.load(out / "model")("a red circle", steps=2, output="numpy").images.shape == (1, 16, 16, 3)
    # --resume puts it back and continues, to the very weights of a run that never crashed
    assert main([*args, "--resume"]) == 0
    assert saved_step(out) == 9
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary or old copy left
    assert main(["train", *CLI_TINY, "--checkpoint-every", "0", "--steps", "9", "--out", str(tmp_path / "straight")]) == 0
    assert_same_tensors(out / "model" / "model.safetensors", tmp_path / "straight" / "model" / "model.safetensors")


def test_a_model_directory_moved_aside_by_a_crash_is_put_back(tiny_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", tmp_path / ".model.old")  # as a crash between the two renames leaves it
    assert dreamlet.load(model).family == "diffusion"
    assert (model / "model.safetensors").is_file() and not (tmp_path / ".model.old").exists()


def test_files_reach_the_disk_before_the_swap(tmp_path, monkeypatch):
    from dreamlet import checkpoint
    events = []
    monkeypatch.setattr(checkpoint, "fsync", lambda path: events.append(("fsync", Path(path).name)))
    real_replace = checkpoint.os.replace
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append(("replace", Path(b).name)), real_replace(a, b)))
    target = tmp_path / "checkpoint"
    target.mkdir()

    def write(tmp):
        (tmp / "a.json").write_text("{}")
        (tmp / "b.safetensors").write_bytes(b"x")

    checkpoint.write_dir_atomically(target, write)
    first_rename = events.index(("replace", ".checkpoint.old"))
    synced_before = {name for kind, name in events[:first_rename] if kind == "fsync"}
    assert {"a.json", "b.safetensors"} <= synced_before and any(n.startswith(".checkpoint.tmp") for n in synced_before)
    assert events[-1] == ("fsync", tmp_path.name)  # and the directory entries after the renames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# -- safe loading --------------------------------------------------------------------------------

def damage_safetensors(path: Path, how: str, marker: Path) -> None:
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header, body = raw[8:8 + length], raw[8 + length:]
    if how == "pickle":  # torch.save's pickle, which would create `marker` if anything unpickled it
        class Trap:
            def __reduce__(self):
                return open, (str(marker), "w")
        torch.save({"weight": Trap()}, path)
    elif how == "offsets":  # a valid JSON header whose first tensor points past the data
        meta = json.loads(header)
        first = next(k for k in meta if k != "__metadata__")
        meta[first]["data_offsets"][1] += 10 ** 6
        new = json.dumps(meta).encode()
        path.write_bytes(struct.pack("<Q", len(new)) + new + body)
    elif how == "garbage":  # the header's bytes overwritten
        path.write_bytes(raw[:8] + bytes(range(256)) * (length // 256) + b"\xff" * (length % 256) + body)
    elif how == "length":  # a header length larger than the file
        path.write_bytes(struct.pack("<Q", len(raw) * 4) + raw[8:])
    elif how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])


SAFETENSORS_DAMAGE = ["pickle", "offsets", "garbage", "length", "truncated"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dreamlet: error: "), err
    return err[0]


@pytest.mark.parametrize("damage", SAFETENSORS_DAMAGE + ["config", "tokenizer"])
def test_a_damaged_model_is_refused_in_one_line(damage, tiny_run, tmp_path, capsys):
    model, marker = tmp_path / "model", tmp_path / "unpickled"
    shutil.copytree(tiny_run / "model", model)
    if damage == "config":
        (model / "config.json").write_text('{"family": "diffusion", "model": ')
    elif damage == "tokenizer":
        (model / "tokenizer.json").write_bytes(b"\x80\x04 not json")
    else:
        damage_safetensors(model / "model.safetensors", damage, marker)
    assert main(["sample", "--model", str(model), "--prompt", "a red circle", "--out", str(tmp_path / "out")]) == 2
    line = one_line_error(capsys)
    assert str(model) in line
    with pytest.raises(UserError):
        dreamlet.load(model)
    assert not marker.exists()  # nothing was unpickled
    assert not (tmp_path / "out").exists()


def test_a_damaged_model_is_refused_by_the_command_without_a_traceback(tiny_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    damage_safetensors(model / "model.safetensors", "pickle", tmp_path / "unpickled")
    done = subprocess.run([sys.executable, "-m", "dreamlet", "sample", "--model", str(model), "--prompt", "a red circle",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "model.safetensors" in done.stderr and not (tmp_path / "unpickled").exists()


@pytest.mark.parametrize("damage", SAFETENSORS_DAMAGE + ["state.json", "state.json keys", "tokenizer"])
def test_a_damaged_checkpoint_is_refused_on_resume_and_left_as_it_is(damage, tiny_run, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "unpickled"
    shutil.copytree(tiny_run, run)
    checkpoint = run / "checkpoint"
    if damage == "state.json":
        (checkpoint / "state.json").write_text("step: 6\n")
    elif damage == "state.json keys":  # JSON, but not what a checkpoint holds
        state = json.loads((checkpoint / "state.json").read_text())
        del state["model"]
        (checkpoint / "state.json").write_text(json.dumps(state))
    elif damage == "tokenizer":
        (checkpoint / "tokenizer.json").write_text("[]")
    else:
        damage_safetensors(checkpoint / "state.safetensors", damage, marker)
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    log_before = (run / "train_log.csv").read_text()
    assert main(["train", "--preset", "tiny", "--batch-size", "8", "--steps", "8", "--out", str(run), "--resume"]) == 2
    line = one_line_error(capsys)
    assert str(checkpoint) in line
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    assert (run / "train_log.csv").read_text() == log_before
    assert not marker.exists()


# -- what training logs ----------------------------------------------------------------------------

def test_the_log_has_the_gradient_norm_before_clipping_and_tensorboard_the_same(tmp_path):
    out = tmp_path / "run"
    # a clip this small makes every update tiny, but the logged norm is the one before clipping
    dreamlet.train(dreamlet.TrainConfig(out=str(out), steps=4, log_every=2, sample_every=2, checkpoint_every=0,
                                        grad_clip=1e-6, **TINY), quiet=True)
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert all(0.01 < float(r["grad_norm"]) < 1e4 for r in rows)
    tensorboard = pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"loss", "lr", "grad_norm", "images_per_s"} <= set(events.Tags()["scalars"]), tensorboard.__version__
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [s for s, _ in losses] == [2, 4]
    assert all(math.isclose(v, float(r["loss"]), abs_tol=1e-5) for (_, v), r in zip(losses, rows))
    assert [e.step for e in events.Images("progress")] == [2]


def test_resuming_drops_log_rows_a_crashed_run_wrote_after_its_checkpoint(tmp_path):
    from dreamlet.training import start_log
    log = tmp_path / "train_log.csv"
    log.write_text("step,loss,lr,images_per_s,elapsed_s\n5,0.9,0.001,80,1.0\n10,0.8,0.001,80,2.0\n15,0.7,0.001,80,3.0\n")
    start_log(log, ["step", "loss", "lr", "images_per_s", "elapsed_s", "grad_norm"], step=10)
    # an older log without grad_norm keeps its rows, with nan in the new column
    assert log.read_text() == ("step,loss,lr,images_per_s,elapsed_s,grad_norm\n"
                               "5,0.9,0.001,80,1.0,nan\n10,0.8,0.001,80,2.0,nan\n")


class FakeWandb:
    """What dreamlet uses of the wandb package, recording the calls (the real one needs an account or
    WANDB_MODE=offline, and is not a dependency)."""

    def __init__(self):
        self.inits, self.logs, self.finished = [], [], []
        wandb = self

        class Run:
            id = "run-abc"

            def log(self, values, step):
                wandb.logs.append((step, values))

            def finish(self, exit_code=0):
                wandb.finished.append(exit_code)

        class Image:
            def __init__(self, picture):
                self.size = picture.size

        self.Run, self.Image = Run, Image

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self.Run()


def test_wandb_gets_the_logged_numbers_and_grids_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    config = dict(out=str(out), log_every=2, sample_every=2, checkpoint_every=0, wandb="shapes-runs", **TINY)
    dreamlet.train(dreamlet.TrainConfig(steps=4, **config), quiet=True)
    assert fake.inits[0]["project"] == "shapes-runs" and fake.inits[0]["id"] is None
    assert fake.inits[0]["config"]["steps"] == 4 and fake.finished == [0]
    scalars = [(step, values) for step, values in fake.logs if "loss" in values]
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [s for s, _ in scalars] == [2, 4] == [int(r["step"]) for r in rows]
    assert all(math.isclose(v["loss"], float(r["loss"]), abs_tol=1e-5) and {"lr", "grad_norm", "images_per_s"} <= v.keys()
               for (_, v), r in zip(scalars, rows))
    assert [step for step, values in fake.logs if "progress" in values] == [2]
    dreamlet.train(dreamlet.TrainConfig(steps=6, resume=True, **config), quiet=True)
    assert fake.inits[1]["id"] == "run-abc" and fake.inits[1]["resume"] == "allow"


def test_wandb_asked_for_but_not_installed_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    code = main(["train", "--model", "diffusion", *CLI_TINY, "--steps", "2",
                     "--out", str(tmp_path / "run"), "--wandb", "shapes-runs"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and 'pip install "dreamlet[wandb]"' in err and len(err.splitlines()) == 1


def test_a_save_in_progress_in_another_process_is_left_alone(tmp_path):
    from dreamlet.checkpoint import write_dir_atomically
    target = tmp_path / "cache"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        theirs = tmp_path / f".cache.tmp-{sleeper.pid}-abc"  # another process, writing now
        crashed = tmp_path / f".cache.tmp-{dead.pid}-def"   # a process that died while writing
        old_style = tmp_path / ".cache.tmpxyz"              # from before the pid was in the name
        for folder in (theirs, crashed, old_style):
            folder.mkdir()
            (folder / "part").write_text("half")
        write_dir_atomically(target, lambda tmp: (tmp / "meta.json").write_text("{}"))
        assert theirs.is_dir() and not crashed.exists() and not old_style.exists()
        assert (target / "meta.json").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_runs_that_build_the_same_cache_at_once_both_train(tmp_path):
    import numpy as np
    from PIL import Image
    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):  # enough that the two builds overlap
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a picture of noise number {i}")
    env = dict(__import__("os").environ, DREAMLET_CACHE=str(tmp_path / "cache"))
    runs = [subprocess.Popen([sys.executable, "-m", "dreamlet", "train", "--data", str(folder), *CLI_TINY,
                              "--steps", "2", "--checkpoint-every", "0", "--out", str(tmp_path / f"run{i}")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    [cache] = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert json.loads((cache / "meta.json").read_text())["count"] == 300
    assert not list((tmp_path / "cache").glob(".*.tmp*"))


@pytest.mark.parametrize("change, words", [
    ({"--seed": "2"}, "--seed 1 (this command: 2)"), ({"--batch-size": "8"}, "--batch-size 4 (this command: 8)"),
    ({"--preset": "small"}, "--preset 'tiny'"), ({"--set": "dit.depth=3"}, "--set"),
])
def test_resume_refuses_a_changed_seed_batch_or_model_in_one_line(tmp_path, capsys, change, words):
    def command(**flags):
        options = {"--preset": "tiny", "--batch-size": "4", "--seed": "1"} | flags
        return ["train", *[a for pair in options.items() for a in pair], "--size", "16", "--sample-every", "0",
                "--out", str(tmp_path / "run")]
    assert main([*command(), "--steps", "2"]) == 0
    capsys.readouterr()
    assert main([*command(**change), "--steps", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "was trained with" in err, err
    assert main([*command(), "--steps", "3", "--resume"]) == 0  # the same command continues it


def test_output_into_a_pipe_nobody_reads_ends_quietly(tmp_path):
    """`dreamlet data inspect digits | head -1`: once the reader has gone, dreamlet stops without a traceback."""
    read, write = os.pipe()
    os.close(read)   # the reader is gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "dreamlet", "data", "inspect", "digits", "--count", "20",
                               "--sheet", str(tmp_path / "sheet.png")], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
