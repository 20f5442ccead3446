import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from dreamlet.cli import build_parser, main

TINY = ["--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--checkpoint-every", "0"]


def test_train_sample_index_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "shapes", "--model", "diffusion", "--size", "16", "--steps", "4",
                 "--out", str(run), *TINY]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["family"] == "diffusion" and config["model"]["image_size"] == 16
    assert (run / "train_log.csv").read_text().startswith("step,loss,lr,images_per_s")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle at the top left\n\na green square below a blue circle\n")
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(run / "model"), "--prompts-file", str(prompts), "--num", "2",
                 "--seed", "5", "--steps", "3", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(records) == 4
    assert sorted(r["seed"] for r in records) == [5, 6, 7, 8]
    assert {r["prompt"] for r in records} == {"a small red circle at the top left",
                                              "a green square below a blue circle"}
    for r in records:
        assert (out / r["file"]).is_file()
    report = tmp_path / "report"
    assert main(["eval", "--model", str(run / "model"), "--benchmark", "shapes", "--prompts", "3", "--seeds", "1",
                 "--steps", "2", "--out", str(report)]) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["counts"]) == {"seen", "heldout", "pair"} and data["counts"]["pair"] == 3
    assert {"color", "shape", "size", "position", "relation"} <= set(data["attributes"])
    assert (tmp_path / "report.md").read_text().startswith("# Shapes benchmark")


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = ["train", "--size", "16", *TINY]
    assert main([*args, "--steps", "6", "--out", str(straight)]) == 0
    assert main([*args, "--steps", "3", "--out", str(split)]) == 0
    assert json.loads((split / "checkpoint" / "state.json").read_text())["step"] == 3
    assert main([*args, "--steps", "6", "--out", str(split), "--resume"]) == 0
    assert json.loads((split / "checkpoint" / "state.json").read_text())["step"] == 6
    a, b = load_file(straight / "model" / "model.safetensors"), load_file(split / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key
    # a second fresh run into the same directory is refused rather than overwriting it
    assert main([*args, "--steps", "6", "--out", str(split)]) == 2


def test_resume_from_a_checkpoint_that_does_not_fit_is_one_line_and_keeps_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--size", "16", *TINY, "--steps", "2", "--out", str(run)]) == 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    # a config whose weights have other shapes than the saved ones
    state["model"]["preview"]["rank"] = 8
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    before = (run / "checkpoint" / "state.safetensors").read_bytes()
    assert main(["train", "--size", "16", *TINY, "--steps", "4", "--out", str(run), "--resume"]) == 2
    assert "cannot resume from" in capsys.readouterr().err
    assert (run / "checkpoint" / "state.safetensors").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["sample", "--model", "{tmp}/missing", "--prompt", "a red circle", "--out", "{tmp}/o"],
     "model directory not found"),
    (["sample", "--model", "{model}", "--prompts-file", "{tmp}/nope.txt", "--out", "{tmp}/o"],
     "prompts file not found"),
    (["sample", "--model", "{model}", "--prompt", "   ", "--out", "{tmp}/o"], "empty prompt"),
    (["train", "--model", "gpt", "--steps", "1", "--out", "{tmp}/r"], "unknown --model 'gpt'"),
    (["train", "--data", "imagenet", "--steps", "1", "--out", "{tmp}/r"], "--data imagenet: no such dataset"),
    (["sample", "--model", "{model}", "--prompt", "a red circle", "--size", "64", "--out", "{tmp}/o"],
     "trained at 32 px"),
    (["eval", "--model", "{model}", "--size", "16"], "trained at 32 px"),
    (["train", "--steps", "1", "--out", "{tmp}/r", "--frobnicate"], "unrecognized arguments"),
    (["sample", "--model", "{model}", "--prompt", "x", "--num", "0", "--out", "{tmp}/o"], "--num must be at least 1"),
    (["train", "--model", "gan", "--arch", "encdec", "--steps", "1", "--out", "{tmp}/r"],
     "--arch is for --model dalle"),
    (["train", "--model", "clip", "--text-encoder", "{tmp}", "--steps", "1", "--out", "{tmp}/r"],
     "--text-encoder is for --model diffusion, diffusion-sr and latent-diffusion"),
    (["train", "--ema-decay", "1.5", "--steps", "1", "--out", "{tmp}/r"], "--ema-decay must be between 0 and 1"),
    (["train", "--warmup", "-3", "--steps", "1", "--out", "{tmp}/r"], "--warmup must be at least 0"),
    (["train", "--lr", "nan", "--steps", "1", "--out", "{tmp}/r"], "--lr must be positive, not nan"),
    (["train", "--minutes", "0", "--out", "{tmp}/r"], "--minutes must be positive"),
    (["train", "--log-every", "0", "--steps", "1", "--out", "{tmp}/r"], "--log-every must be at least 1"),
    (["train", "--seed", "-1", "--steps", "1", "--out", "{tmp}/r"], "--seed must be between 0 and 4294967295"),
    (["train", "--seed", str(2 ** 64), "--steps", "1", "--out", "{tmp}/r"], "--seed must be between 0"),
    (["eval", "--model", "{model}", "--steps", "-5"], "--steps must be at least 1, not -5"),
    (["eval", "--model", "{model}", "--seeds", "0"], "--seeds and --distractors must be at least 1"),
    (["demo", "--prompts", "0", "--out", "{tmp}/d"], "--prompts and --steps must be at least 1"),
    (["demo", "--steps", "0", "--out", "{tmp}/d"], "--prompts and --steps must be at least 1"),
    (["demo", "--minutes", "-1", "--out", "{tmp}/d"], "--minutes positive"),
    (["sample", "--model", "{model}", "--prompt", "x", "--out", "{model}/config.json"], "is a file, not a directory"),
    (["compare", "{tmp}/bad.json"], "is not a JSON report"),
])
def test_errors_are_one_line_with_exit_2(argv, message, tiny_run, tmp_path, capsys):
    """In this process, so that 25 refusals do not each pay a fresh `import torch` (4 s on an AVX2 CPU): any
    exception main() lets through, which a user would see as a traceback, fails the test here."""
    argv = [a.format(tmp=tmp_path, model=tiny_run / "model") for a in argv]
    (tmp_path / "bad.json").write_text("{not json")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize("argv, message", [
    (["train", "--steps", "1", "--out", "{tmp}/r", "--frobnicate"], "unrecognized arguments"),
    (["sample", "--model", "{tmp}/missing", "--prompt", "a red circle", "--out", "{tmp}/o"],
     "model directory not found"),
])
def test_the_installed_command_refuses_in_one_line_too(argv, message, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    result = subprocess.run([sys.executable, "-m", "dreamlet", *argv], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_the_family_in_the_architecture_doc_needs_one_module_and_one_registry_line(tmp_path, monkeypatch, capsys):
    """docs/architecture.md's worked example, registered: train (with its own flag), sample, eval and
    the CLI's help and refusals pick it up with no other edit."""
    from pathlib import Path
    from dreamlet.models import FAMILIES
    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    example = doc.split("### A worked example")[1].split("```python\n")[1].split("```")[0]
    example = example.replace("from . import", "from dreamlet.models import").replace("from ..", "from dreamlet.")
    (tmp_path / "mean_colour_toy.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(FAMILIES, "mean-colour", "mean_colour_toy")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "mean-colour: the whole picture or a disc" in " ".join(capsys.readouterr().out.split())
    run = tmp_path / "run"
    assert main(["train", "--model", "mean-colour", "--paint", "disc", "--size", "16", "--steps", "20",
                 "--batch-size", "8", "--sample-every", "10", "--out", str(run)]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model"]["paint"] == "disc" and config["train"]["lr"] == 0.05
    assert (run / "progress" / "step_000010.png").is_file()
    assert main(["sample", "--model", str(run / "model"), "--prompt", "a red circle",
                 "--out", str(tmp_path / "o")]) == 0
    assert main(["eval", "--model", str(run / "model"), "--prompts", "2", "--seeds", "1",
                 "--out", str(tmp_path / "report")]) == 0
    assert "16 px, one forward pass" in (tmp_path / "report.md").read_text()
    capsys.readouterr()
    assert main(["train", "--model", "gan", "--paint", "disc", "--steps", "1", "--out", str(tmp_path / "g")]) == 2
    assert capsys.readouterr().err.strip() == "dreamlet: error: --paint is for --model mean-colour"


def test_every_train_config_field_is_a_train_flag(monkeypatch):
    """The flags are built from TrainConfig: each field is reachable, and a value given on the command line
    arrives in the TrainConfig that training gets."""
    import dataclasses
    from dreamlet import training
    from dreamlet.training import TrainConfig
    seen = []
    monkeypatch.setattr(training, "train", lambda config, **_: seen.append(config) or "m")
    values = dict(warmup=7, min_lr_ratio=0.2, weight_decay=0.05, grad_clip=0.5, ema_decay=0.9, tokenizer_captions=500,
                  log_every=3, max_bad_steps=2, batch_size=4, lr=0.01, seed=3, sample_every=0, checkpoint_every=9)
    argv = ["train", "--out", "r", "--steps", "5", "--compile", "--set", "dit.depth=2"]
    for name, value in values.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    assert main(argv) == 0
    config = seen[0]
    assert {k: getattr(config, k) for k in values} == values and config.compile and config.steps == 5
    assert config.settings == {"dit": {"depth": 2}}
    parser_flags = {a for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                    for a in action.option_strings}
    missing = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name != "settings" and "--" + f.name.replace("_", "-") not in parser_flags]
    assert not missing and "--set" in parser_flags
