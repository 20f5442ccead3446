"""Scaling: several processes and accumulated micro-batches train on the same global batch as one
process does, only the main process writes, activation checkpointing changes memory and not the
result, and the --max-memory planner measures a model and picks a plan that fits (or says why not)."""
import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import dreamlet
from dreamlet.checkpoint import UserError
from dreamlet.cli import main
from dreamlet.config import updated
from dreamlet.models import get_family
from dreamlet.scaling import (Footprint, measure_footprint, micro_batches, peak_bytes, plan_memory,
                              set_activation_checkpointing)

TINY = dict(preset="tiny", size=16, seed=3, sample_every=0, checkpoint_every=0, tokenizer_captions=500)


def fixed_loss(self, images, ids, empty_ids, generator=None):
    """The diffusion loss at one noise level with no noise drawn: nothing random, and the mean over the
    batch of a loss per picture, so a batch split any way must give the same gradient up to rounding."""
    t = torch.full((len(images),), 0.7, device=images.device)
    return F.mse_loss(self.denoiser.velocity(0.6 * images, t, self.condition(ids)).float(), -0.8 * images)


def losses(run: Path) -> list[tuple[int, str, float]]:
    with open(run / "train_log.csv", newline="") as f:
        return [(int(r["step"]), r["lr"], float(r["loss"])) for r in csv.DictReader(f)]


def assert_close_weights(a: Path, b: Path, tolerance: float) -> None:
    x, y = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert x.keys() == y.keys()
    worst = max((x[k] - y[k]).abs().max().item() for k in x)
    assert worst < tolerance, worst


# -- the data each process and micro-batch takes -------------------------------------------------------

@pytest.mark.parametrize("accumulate, world", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2)])
def test_every_split_of_a_step_covers_its_global_batch_once(accumulate, world):
    step, batch = 7, 32
    taken = [i for rank in range(world) for start, count in micro_batches(step, batch, accumulate, rank, world)
             for i in range(start, start + count)]
    assert sorted(taken) == list(range(step * batch, (step + 1) * batch))
    assert micro_batches(step, batch) == [(step * batch, batch)]  # one process, one batch: as before


def test_worker_processes_draw_the_same_steps_in_the_same_order(tmp_path):
    """--workers draws pictures ahead in other processes: the stream, the weights and a resume are the
    same as drawing them in the training loop."""
    from dreamlet.data import get_dataset
    from dreamlet.scaling import step_batches
    dataset = get_dataset("shapes", 16, 3, None, True)
    inline, ahead = step_batches(dataset, 5, 8, 2, 1, 2, 0), step_batches(dataset, 5, 8, 2, 1, 2, 2)
    for _ in range(7):
        a, b = next(inline), next(ahead)
        assert len(a) == len(b) == 2
        for (images_a, captions_a), (images_b, captions_b) in zip(a, b):
            assert np.array_equal(images_a, np.asarray(images_b)) and list(captions_a) == list(captions_b)
    config = dict(TINY, steps=6, checkpoint_every=3)
    dreamlet.train(dreamlet.TrainConfig(out=str(tmp_path / "inline"), workers=0, **config), quiet=True)
    dreamlet.train(dreamlet.TrainConfig(out=str(tmp_path / "ahead"), workers=2, **dict(config, steps=3)), quiet=True)
    dreamlet.train(dreamlet.TrainConfig(out=str(tmp_path / "ahead"), workers=2, resume=True, **config), quiet=True)
    x, y = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("inline", "ahead"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)  # bit for bit


def test_a_batch_that_does_not_split_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--size", "16", "--steps", "2", "--batch-size", "6",
                 "--accumulate", "4", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ("dreamlet: error: --batch-size 6 does not split evenly into 4 "
                                                "micro-batches; choose a batch size divisible by 4")
    assert main(["train", "--steps", "2", "--accumulate", "0", "--out", str(out)]) == 2
    assert main(["train", "--steps", "2", "--max-memory", "-1", "--out", str(out)]) == 2
    assert main(["train", "--preset", "tiny", "--size", "16", "--steps", "2", "--max-memory", "4", "--accumulate", "2",
                 "--out", str(out)]) == 2
    assert "chooses --accumulate and --checkpointing itself" in capsys.readouterr().err


# -- gradient accumulation -------------------------------------------------------------------------

def test_accumulated_micro_batches_train_like_the_whole_batch(tmp_path, monkeypatch):
    """With nothing random in the loss, 2 micro-batches of 4 give the weights of one batch of 8 (to
    rounding); with the real loss, which draws other noise for the smaller batches, the loss curve
    stays within the noise of the real one."""
    model = get_family("diffusion").model
    real_loss = model.loss
    monkeypatch.setattr(model, "loss", fixed_loss)
    config = dreamlet.TrainConfig(steps=4, batch_size=8, warmup=0, log_every=1, **TINY)
    for accumulate in (1, 2):
        dreamlet.train(dataclasses.replace(config, out=str(tmp_path / f"fixed{accumulate}"), accumulate=accumulate),
                       quiet=True)
    one, two = losses(tmp_path / "fixed1"), losses(tmp_path / "fixed2")
    assert [(s, lr) for s, lr, _ in one] == [(s, lr) for s, lr, _ in two] and len(one) == 4
    assert all(abs(a - b) < 1e-4 * a for (_, _, a), (_, _, b) in zip(one, two))
    assert one[-1][2] < one[0][2]  # it did learn, so the weights below moved
    assert_close_weights(tmp_path / "fixed1", tmp_path / "fixed2", 1e-4)
    assert json.loads((tmp_path / "fixed2" / "model" / "config.json").read_text())["train"]["accumulate"] == 2

    monkeypatch.setattr(model, "loss", real_loss)
    config = dataclasses.replace(config, steps=30, batch_size=32, log_every=10, warmup=10)
    for accumulate in (1, 2):
        dreamlet.train(dataclasses.replace(config, out=str(tmp_path / f"real{accumulate}"), accumulate=accumulate),
                       quiet=True)
    one, two = losses(tmp_path / "real1"), losses(tmp_path / "real2")
    assert [(s, lr) for s, lr, _ in one] == [(s, lr) for s, lr, _ in two] and len(one) == 3
    assert all(abs(a - b) < 0.15 * a for (_, _, a), (_, _, b) in zip(one, two)), (one, two)


# -- several processes -------------------------------------------------------------------------------

# Run by torchrun in each process: notes which process writes which directory, then trains through the
# public API; options: "fixed" makes the loss deterministic (fixed_loss's source is put in front), "split"
# stops the run at step 2 by a callback (which only the main process runs) and resumes it. At exit (after
# dreamlet's own handler, as atexit runs last-registered first) each process notes whether it left the group.
LAUNCHED = """
notes, options, config = Path(sys.argv[1]), sys.argv[2].split(","), json.loads(sys.argv[3])
torch.set_num_threads(1)

def note_exit():
    with open(notes.with_name("exits.txt"), "a") as f:
        f.write(f"{os.environ['RANK']} {'joined' if torch.distributed.is_initialized() else 'left'}\\n")
atexit.register(note_exit)

def noting(write_dir):
    def write_dir_atomically(target, write):
        with open(notes, "a") as f:
            f.write(f"{os.environ['RANK']} {Path(target).name}\\n")
        return write_dir(target, write)
    return write_dir_atomically

for module in (dreamlet.training, dreamlet.pipeline):
    module.write_dir_atomically = noting(module.write_dir_atomically)
if "fixed" in options:
    get_family("diffusion").model.loss = fixed_loss
config = dreamlet.TrainConfig(**config)
if "split" in options:
    dreamlet.train(config, callback=lambda progress: progress.step == 2 and progress.stop(), quiet=True)
    config = dataclasses.replace(config, resume=True)
dreamlet.train(config, quiet=True)
"""


def launch(tmp_path: Path, processes: int, config: dict, options: str) -> subprocess.CompletedProcess:
    import inspect
    script = tmp_path / "launched.py"
    script.write_text("import atexit, dataclasses, json, os, sys\nfrom pathlib import Path\nimport torch\nimport torch.nn.functional as F\n"
                      "import dreamlet, dreamlet.pipeline, dreamlet.training\nfrom dreamlet.models import get_family\n\n"
                      + inspect.getsource(fixed_loss) + LAUNCHED)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(script), str(tmp_path / "writes.txt"), options, json.dumps(config)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_train_like_one_on_the_same_global_batch(tmp_path, monkeypatch):
    """Two CPU processes (gloo), each on half of every batch of 16, against one process on the whole
    batch, with the loss made deterministic: the same logged losses and weights (to rounding), and
    only the main process wrote the checkpoint and the model."""
    config = dict(steps=4, batch_size=16, warmup=0, log_every=1, **TINY)
    launch(tmp_path, 2, config | {"out": str(tmp_path / "two")}, "fixed")
    writes = (tmp_path / "writes.txt").read_text().split()
    assert writes == ["0", "checkpoint", "0", "model"]  # one save, at the end, by rank 0 alone
    monkeypatch.setattr(get_family("diffusion").model, "loss", fixed_loss)
    dreamlet.train(dreamlet.TrainConfig(out=str(tmp_path / "one"), **config), quiet=True)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [(s, lr) for s, lr, _ in one] == [(s, lr) for s, lr, _ in two] and len(one) == 4
    assert all(abs(a - b) < 1e-4 * a for (_, _, a), (_, _, b) in zip(one, two)), (one, two)
    assert_close_weights(tmp_path / "one", tmp_path / "two", 1e-4)
    state = load_file(tmp_path / "two" / "checkpoint" / "state.safetensors")
    assert {"rng", "rng.1"} <= state.keys()  # both processes' random streams, for an exact resume


def test_two_processes_stopped_and_resumed_end_bit_for_bit_as_unbroken(tmp_path):
    """With the real loss: each process's random stream is saved and restored, so a two-process run
    stopped at step 2 (a callback in the main process stops both) and resumed ends with the same
    weights, EMA, moments and random states, bit for bit, as one that never stopped."""
    config = dict(steps=4, batch_size=16, log_every=1, **TINY)
    launch(tmp_path, 2, config | {"out": str(tmp_path / "split")}, "split")
    launch(tmp_path, 2, config | {"out": str(tmp_path / "straight")}, "")
    for name in ("model/model.safetensors", "checkpoint/state.safetensors"):
        a, b = load_file(tmp_path / "split" / name), load_file(tmp_path / "straight" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert losses(tmp_path / "split") == losses(tmp_path / "straight") and len(losses(tmp_path / "split")) == 4
    # every process left the process group before the interpreter's teardown, where gloo's threads could
    # otherwise abort a finished run ("terminate called without an active exception")
    assert sorted((tmp_path / "exits.txt").read_text().splitlines()) == ["0 left", "0 left", "1 left", "1 left"]


def test_accelerate_launch_runs_the_unchanged_command_on_two_cpu_processes(tmp_path):
    """`accelerate launch --cpu --num_processes 2 -m dreamlet train ...` with the real loss: the loss curve
    follows a one-process run of the same command (each process draws its own noise, so within a
    tolerance), and the log, the TensorBoard events and the checkpoint are written once."""
    args = ["train", "--preset", "tiny", "--size", "16", "--batch-size", "32", "--steps", "30", "--seed", "3",
            "--sample-every", "0", "--checkpoint-every", "10"]
    accelerate = str(Path(sys.executable).parent / "accelerate")  # installed with dreamlet, beside this Python
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dreamlet", *args,
                           "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model: ") == 1  # the main process alone says where the model is
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [(s, lr) for s, lr, _ in one] == [(s, lr) for s, lr, _ in two]
    assert [s for s, _, _ in two] == [20, 30]  # logged every 20 steps and at the end, once each
    assert all(abs(a - b) < 0.15 * a for (_, _, a), (_, _, b) in zip(one, two)), (one, two)
    assert json.loads((tmp_path / "two" / "checkpoint" / "state.json").read_text())["step"] == 30
    assert len(list((tmp_path / "two" / "tensorboard").glob("events.*"))) == 1


# -- activation checkpointing ---------------------------------------------------------------------------

def test_activation_checkpointing_gives_the_same_weights(tmp_path):
    config = dreamlet.TrainConfig(steps=3, batch_size=8, **TINY)
    for on in (False, True):
        dreamlet.train(dataclasses.replace(config, out=str(tmp_path / str(on)), checkpointing=on), quiet=True)
    assert_close_weights(tmp_path / "False", tmp_path / "True", 1e-6)


# -- the memory planner ------------------------------------------------------------------------------------

def tiny_diffusion(depth: int = 4):
    family = get_family("diffusion")
    overrides = family.presets["tiny"] | {"image_size": 32, "dit": family.presets["tiny"]["dit"] | {"depth": depth}}
    torch.manual_seed(0)
    return family.model(updated(family.config(), overrides))


def random_loss(module, count):
    generator = torch.Generator().manual_seed(count)
    images = torch.rand(count, 3, 32, 32, generator=generator) * 2 - 1
    ids = torch.randint(1, 100, (count, 12), generator=generator)
    return module.loss(images, ids, torch.zeros(1, 12, dtype=torch.long), generator)


def test_the_planner_measures_activations_and_checkpointing_saves_them():
    model = tiny_diffusion()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    footprint = measure_footprint(model, random_loss, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left as it was
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in model.parameters())
    weights = sum(t.nbytes for t in model.state_dict().values())
    assert footprint.static == 2 * weights + 2 * sum(p.nbytes for p in model.parameters())  # model, EMA, AdamW's moments
    assert footprint.per_picture[True] < 0.8 * footprint.per_picture[False] and footprint.checkpointing_helps
    # the estimate for 16 pictures, extrapolated from passes of 2 and 4, against a measured pass of 16 (as the
    # first micro-batch of a step: no gradients before it): on the safe side, and close
    for on in (False, True):
        model.zero_grad(set_to_none=True)
        set_activation_checkpointing(model, on)
        measured = peak_bytes(lambda: random_loss(model, 16).backward(), torch.device("cpu"))
        estimated = footprint.bytes(16, on) - footprint.static
        assert measured <= estimated < 1.15 * measured, (on, estimated, measured)


MiB = 2 ** 20
# a model with 100 MiB of weights, EMA and moments, 50 MiB of gradients, and passes of 10 MiB + 40 MiB a
# picture (5 MiB a picture with checkpointing): 160 + 40 m MiB for a micro-batch of m, 160 + 5 m with it
FOOTPRINT = Footprint(static=100 * MiB, gradients=50 * MiB, fixed={False: 10 * MiB, True: 10 * MiB},
                      per_picture={False: 40 * MiB, True: 5 * MiB}, device="cpu")


def test_the_plan_keeps_the_batch_and_spends_memory_in_order():
    def plan(mib, batch=32, world=1, footprint=FOOTPRINT):
        chosen = plan_memory(footprint, batch, mib * MiB, world)
        return chosen.accumulate, chosen.micro_batch, chosen.checkpointing

    # the estimates in MiB, before the 10 % headroom
    assert plan(2000) == (1, 32, False)              # 1440
    assert plan(1000) == (2, 16, False)              # accumulation first: 800
    assert plan(600) == (4, 8, False)                # down to micro-batches of 8: 480
    assert plan(500) == (1, 32, True)                # then checkpointing, on the whole batch: 320
    assert plan(300) == (2, 16, True)                # and with the fewest micro-batches that fit: 240
    assert plan(210) == (8, 4, True)                 # 180
    assert plan(185) == (32, 1, True)                # 165, the least this model can train with
    assert plan(1000, world=2) == (1, 16, False)     # two processes: each plans for its half of the batch, 800
    with pytest.raises(UserError) as error:
        plan(180)
    assert str(error.value) == ("--max-memory 0.175781 GiB is too small: even 1 picture per micro-batch with activation "
                                "checkpointing needs about 0.177 GiB (0.0977 for weights, EMA and AdamW); try a "
                                "smaller --preset or --size")
    flat = dataclasses.replace(FOOTPRINT, per_picture={False: 40 * MiB, True: 40 * MiB})
    assert plan(300, footprint=flat) == (16, 2, False)  # a model whose blocks do not checkpoint: never the flag


def test_train_with_max_memory_takes_the_plan_or_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    import dreamlet.training as training
    monkeypatch.setattr(training, "measure_footprint", lambda *args, **kwargs: FOOTPRINT)
    args = ["train", "--preset", "tiny", "--size", "16", "--batch-size", "32", "--steps", "2", "--sample-every", "0"]
    assert main([*args, "--max-memory", str(210 / 1024), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert ("dreamlet: memory plan for 0.205078 GiB: batch 32 as 8 micro-batches of 4, activation checkpointing on; "
            "estimated peak 0.176 GiB (0.0977 weights, EMA and AdamW; measured on cpu)\n") in out
    saved = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["train"]
    assert (saved["accumulate"], saved["checkpointing"], saved["max_memory"]) == (8, True, 210 / 1024)
    assert main([*args, "--max-memory", "0.05", "--out", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dreamlet: error: --max-memory 0.05 GiB is too small")
    assert not (tmp_path / "small" / "checkpoint").exists()


# -- torch.compile ------------------------------------------------------------------------------------------

def test_compile_flag_puts_the_networks_through_torch_compile(tmp_path, monkeypatch):
    """With dynamo's eager backend: the graphs are captured, but inductor's C++ code generation, which took
    110 s for this tiny model on 2 CPU cores, is left out unless DREAMLET_TEST_INDUCTOR=1 asks for it."""
    real, compiled = torch.nn.Module.compile, []
    backend = {} if os.environ.get("DREAMLET_TEST_INDUCTOR") else {"backend": "eager"}

    def compile(self, **kwargs):
        compiled.append(type(self).__name__)
        real(self, **(kwargs | backend))

    monkeypatch.setattr(torch.nn.Module, "compile", compile)
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--size", "16", "--batch-size", "4", "--steps", "2", "--sample-every", "0",
                 "--compile", "--out", str(out)]) == 0
    assert {"TextEncoder", "DiT"} <= set(compiled)
    assert json.loads((out / "model" / "config.json").read_text())["train"]["compile"] is True
    assert dreamlet.load(out / "model")("a red circle", steps=2, output="numpy").images.shape == (1, 16, 16, 3)
