"""The training loop's first stages: a family declares the model it needs trained first (dalle's image
tokenizer), and the loop trains it, in its own folder of OUT, resumable by the whole command."""
import dataclasses
import json
import signal
from pathlib import Path

import pytest
import torch

from dreamlet import training
from dreamlet.checkpoint import Interrupted, UserError
from dreamlet.config import to_dict
from dreamlet.models import get_family
from dreamlet.models.vqvae import VQConfig
from dreamlet.training import FirstStage, TrainConfig


def tokenizer_dir(path: Path, size: int) -> Path:
    """A model directory's config.json as a trained image tokenizer writes it (what the prior reads)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"family": "vqvae", "model": to_dict(VQConfig(image_size=size))}))
    return path


def test_dalle_declares_its_image_tokenizer_as_a_first_stage_with_its_share_of_the_budget(tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(model="dalle", out=str(run), minutes=10, size=16, seed=3, checkpoint_every=7).resolved()
    stage = get_family("dalle").prepare(config, {"tokenizer_share": 0.3}, torch.device("cpu"), True)
    assert isinstance(stage, FirstStage)
    first = stage.config
    assert (first.model, Path(first.out), first.size, first.seed) == ("vqvae", run / "tokenizer", 16, 3)
    assert first.minutes == pytest.approx(3) and first.steps is None and not first.resume
    assert (first.sample_every, first.checkpoint_every) == (0, 7)
    with pytest.raises(UserError, match="not a model directory"):
        stage.then(tmp_path / "nowhere")
    prior, overrides = stage.then(tokenizer_dir(run / "tokenizer" / "model", 16))
    assert prior.minutes == pytest.approx(7) and overrides["tokenizer_share"] == 0.3
    assert overrides["tokenizer"] == str(run / "tokenizer" / "model") and overrides["vq"].image_size == 16

    by_steps = dataclasses.replace(config, minutes=None, steps=40)
    stage = get_family("dalle").prepare(by_steps, {}, torch.device("cpu"), True)
    assert (stage.config.steps, stage.config.minutes) == (40, None)
    assert stage.then(run / "tokenizer" / "model")[0] == by_steps
    # a tokenizer trained before: no first stage
    given = {"tokenizer": str(run / "tokenizer" / "model")}
    prior, overrides = get_family("dalle").prepare(config, given, torch.device("cpu"), True)
    assert prior == config and overrides["vq"].image_size == 16


def test_the_loop_trains_a_declared_first_stage_resumes_it_and_stops_as_the_whole_command(tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = TrainConfig(model="vqvae", out=str(out / "first"), steps=3)
    family = dataclasses.replace(get_family("diffusion"), prepare=lambda config, overrides, device, quiet, saved=None:
                                 FirstStage(first, lambda model: (config, overrides | {"first": str(model)}), "a", "b"))
    trained = []
    monkeypatch.setattr(training, "train", lambda config, quiet: trained.append(config) or Path(config.out) / "model")
    config = TrainConfig(out=str(out), steps=3)
    assert training.prepare(family, config, {}, "cpu", True) == (config, {"first": str(out / "first" / "model")})
    assert trained == [first]
    (out / "first" / "checkpoint").mkdir(parents=True)
    (out / "first" / "checkpoint" / "state.json").write_text("{}")
    training.prepare(family, config, {}, "cpu", True)
    assert trained[-1] == dataclasses.replace(first, resume=True)  # stopped there before: continued

    def stopped(config, quiet):
        raise Interrupted(signal.SIGTERM, 2, Path(config.out))

    monkeypatch.setattr(training, "train", stopped)
    with pytest.raises(Interrupted) as error:
        training.prepare(family, config, {}, "cpu", True)
    assert str(error.value).endswith(f"--resume --out {out}")  # the whole command, not its stage


def test_a_checkpoint_of_another_config_version_is_refused_in_one_line_and_kept(tmp_path, capsys):
    from dreamlet.cli import main
    run = tmp_path / "run"
    tiny = ["--size", "16", "--preset", "tiny", "--batch-size", "4", "--sample-every", "0", "--checkpoint-every", "0"]
    assert main(["train", *tiny, "--steps", "2", "--out", str(run)]) == 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["config_version"] == 4
    state["config_version"] = 3
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    before = (run / "checkpoint" / "state.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", *tiny, "--steps", "4", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "config version 3" in err and "its model in" in err
    assert (run / "checkpoint" / "state.safetensors").read_bytes() == before


def test_progress_is_plain_lines_where_stderr_is_not_a_terminal(tmp_path, capsys):
    """CI, nohup, `> log`: no carriage-return redraw at every step, a line every 30 s and the last one."""
    import time
    from dreamlet.cli import main
    started = time.perf_counter()
    assert main(["train", "--size", "16", "--preset", "tiny", "--batch-size", "4", "--steps", "30",
                 "--sample-every", "0", "--out", str(tmp_path / "r")]) == 0
    err, seconds = capsys.readouterr().err, time.perf_counter() - started
    lines = [line for line in err.splitlines() if line.startswith("train diffusion")]
    assert "\r" not in err
    assert 1 <= len(lines) <= 3 + seconds // 30, err  # the first, one every 30 s, the last (here 2: 0/30, 30/30)
    assert lines[-1].startswith("train diffusion") and "30/30 steps, loss" in lines[-1]


def test_a_terminal_still_gets_the_redrawn_bar():
    import io
    from dreamlet.bars import Lines, progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        with progress_bar(stream, total=50, desc="x") as bar:
            for _ in range(50):
                bar.update(1)
    assert "\r" in terminal.getvalue() and "\r" not in log.getvalue() and len(log.getvalue().splitlines()) <= 2
    assert not isinstance(progress_bar(terminal, total=1).fp, Lines)
