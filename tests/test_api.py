import dataclasses
import json
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dreamlet
from dreamlet.checkpoint import UserError
from dreamlet.cli import main


def test_cli_and_api_give_identical_pictures(tiny_run, tmp_path):
    model = tiny_run / "model"
    out = tmp_path / "cli"
    prompts = ["a small red circle at the top left", "a blue square above a green triangle"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert main(["sample", "--model", str(model), "--prompts-file", str(tmp_path / "prompts.txt"), "--num", "2",
                 "--seed", "5", "--steps", "3", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    pipe = dreamlet.load(model)
    images = pipe(prompts, seed=5, num=2, steps=3)
    assert len(images) == 4 and all(isinstance(image, Image.Image) for image in images)
    for record, image in zip(records, images):
        assert np.array_equal(np.asarray(Image.open(out / record["file"])), np.asarray(image))
    array = pipe(prompts, seed=5, num=2, steps=3, output="numpy").images
    tensor = pipe(prompts, seed=5, num=2, steps=3, output="tensor").images
    assert array.shape == (4, 32, 32, 3) and tensor.shape == (4, 3, 32, 32)
    assert torch.allclose(tensor, torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255)


def test_pipeline_options(tiny_run):
    pipe = dreamlet.load(tiny_run / "model")
    assert pipe.to("cpu") is pipe
    one = pipe("a large green diamond at the center", steps=2, generator=torch.Generator().manual_seed(0), output="numpy")
    two = pipe("a large green diamond at the center", steps=2, generator=torch.Generator().manual_seed(0), output="numpy")
    assert np.array_equal(one.images, two.images)
    with pytest.raises(UserError, match="unknown output"):
        pipe("a red circle", steps=2, output="svg")
    with pytest.raises(UserError, match="empty prompt"):
        pipe("   ")
    with pytest.raises(UserError, match="--rerank must be at least 1"):
        pipe("a red circle", rerank=0)


def test_public_names_and_version():
    assert dreamlet.TrainConfig().data == "shapes"
    assert dreamlet.datasets.load("digits", 16, quiet=True).captions(1)
    assert callable(dreamlet.train) and callable(dreamlet.evaluate)
    with pytest.raises(AttributeError):
        dreamlet.nothing_here
    done = subprocess.run([sys.executable, "-m", "dreamlet", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"dreamlet {dreamlet.__version__}"


def test_train_config_takes_the_family_defaults():
    assert dreamlet.TrainConfig().resolved().lr == 2e-3
    gan = dreamlet.TrainConfig(model="gan").resolved()
    assert (gan.lr, gan.grad_clip, gan.warmup) == (5e-4, 0.0, 0)
    assert dreamlet.TrainConfig(model="gan", lr=1e-4).resolved().lr == 1e-4  # what the user set wins
    with pytest.raises(UserError, match="unknown --model .nope."):
        dreamlet.TrainConfig(model="nope").resolved()


TINY = dict(preset="tiny", batch_size=4, sample_every=0, checkpoint_every=0, tokenizer_captions=500, log_every=2)


def test_callback_sees_progress_and_can_stop(tmp_path):
    seen = []

    def watch(progress):
        seen.append((progress.step, progress.loss, progress.grid is not None))
        if progress.step >= 4:
            progress.stop()

    out = tmp_path / "run"
    config = dreamlet.TrainConfig(out=str(out), steps=1000, **(TINY | {"sample_every": 2}))
    model_dir = dreamlet.train(config, callback=watch, quiet=True)
    assert [s for s, _, _ in seen] == [2, 4] and all(grid for _, _, grid in seen)
    assert all(np.isfinite(loss) for _, loss, _ in seen)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and (model_dir / "model.safetensors").is_file()
    dreamlet.train(dataclasses.replace(config, steps=6, resume=True), quiet=True)  # stopped runs resume
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    from dreamlet.models import get_family
    model_class = get_family("diffusion").model
    real_loss, calls = model_class.loss, []

    def sometimes_nan(self, *args):
        calls.append(1)
        loss = real_loss(self, *args)
        return loss * float("nan") if len(calls) in (3, 4) or len(calls) > 8 else loss

    monkeypatch.setattr(model_class, "loss", sometimes_nan)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="non-finite losses in a row") as error:
        dreamlet.train(dreamlet.TrainConfig(out=str(out), steps=100, **(TINY | {"checkpoint_every": 6})), quiet=True)
    assert "checkpoint" in str(error.value) and "\n" not in str(error.value)
    # two bad steps were skipped and training went on; the run stopped after five more in a row,
    # leaving the checkpoint of step 6 (all good weights) to load
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6
    image = dreamlet.load(out / "model")("a red circle", steps=2, output="numpy").images
    assert image.shape == (1, 32, 32, 3)
    log = (out / "train_log.csv").read_text().splitlines()
    assert all("nan" not in line for line in log[1:4])  # skipped steps do not poison the logged loss


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dreamlet", "train", "--steps", "100000", "--preset", "tiny", "--batch-size", "4",
               "--sample-every", "0", "--checkpoint-every", "0", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1].startswith("dreamlet: stopped by SIGTERM at step")
    assert "Traceback" not in stderr
    step = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    assert step >= 20
    assert main(["train", "--steps", str(step + 2), "--preset", "tiny", "--batch-size", "4", "--sample-every", "0",
                 "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == step + 2


def test_example_script_trains_samples_evaluates_and_plots(tmp_path):
    script = Path(__file__).parents[1] / "examples" / "train_shapes.py"
    done = subprocess.run([sys.executable, str(script), "--steps", "4", "--prompts", "1", "--out", str(tmp_path / "ex")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "seen" in done.stdout and "held-out" in done.stdout
    with Image.open(tmp_path / "ex" / "summary.png") as summary:
        assert summary.width > 600
    assert dreamlet.load(tmp_path / "ex" / "model").family == "diffusion"


def test_wheel_installs_into_a_fresh_environment(tmp_path):
    root = Path(__file__).parents[1]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(root)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel, = (tmp_path / "dist").glob("dreamlet-*.whl")
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    # the dependencies (torch ...) come from this environment rather than the network; dreamlet itself
    # must come from the wheel, not from this checkout
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    version = subprocess.run([str(fresh / "bin" / "dreamlet"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"dreamlet {dreamlet.__version__}"
    where = subprocess.run([str(python), "-c", "import dreamlet, importlib.metadata as m; print(dreamlet.__file__); "
                            "print(m.metadata('dreamlet').get_all('Provides-Extra'))"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.splitlines()
    assert where[0].startswith(site)
    assert all(extra in where[1] for extra in ("serve", "peers", "data"))
