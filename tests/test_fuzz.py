"""A fuzz test of the command line. Every number option of train, sample, eval and data inspect, given values a
user may type by mistake (negative, zero, huge, NaN, infinite, empty, not a number), and every path option of
train, sample, eval, compare and data inspect, given a missing path, a folder, a garbage file, an empty file or
a picture where something else is meant, exits 0 (a value that is fine) or 2 with one line on stderr: never a
traceback. Bases are cheap, so an accepted value costs one training step or one tiny drawing. (`serve` has its
own tests: an accepted value would start a server.)"""
import argparse

import pytest

from dreamlet.cli import build_parser, main

BAD_NUMBERS = ["-1", "0", "nan", "inf", "-inf", "", "abc", "1e999", "99999999999999999999999", "2.5"]
SKIP = {"--port", "--steps", "--minutes"}  # a serve port, and the budget that bounds each case's own run


def number_options(command: str) -> list[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = commands.choices[command]
    if command == "data":
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["inspect"]
    return sorted(a.option_strings[-1] for a in sub._actions
                  if a.option_strings and a.type in (int, float) and a.option_strings[-1] not in SKIP)


def bases(tiny_run, tmp_path) -> dict[str, list[str]]:
    model = str(tiny_run / "model")
    return {"train": ["train", "--preset", "tiny", "--size", "16", "--batch-size", "2", "--steps", "1",
                      "--sample-every", "0", "--checkpoint-every", "0", "--tokenizer-captions", "50",
                      "--out", str(tmp_path / "run")],
            "sample": ["sample", "--model", model, "--prompt", "a red circle", "--steps", "1", "--out", str(tmp_path / "s")],
            "eval": ["eval", "--model", model, "--prompts", "1", "--seeds", "1", "--steps", "1",
                     "--out", str(tmp_path / "e")],
            "data": ["data", "inspect", "digits", "--size", "16", "--sheet", str(tmp_path / "sheet.png")],
            "compare": ["compare", str(tiny_run), "--out", str(tmp_path / "c")]}


CASES = [(command, option, value) for command in ("train", "sample", "eval", "data")
         for option in number_options(command) for value in BAD_NUMBERS]


@pytest.mark.parametrize("command, option, value", CASES, ids=[f"{c} {o} {v!r}" for c, o, v in CASES])
def test_a_bad_number_is_one_line_and_exit_2_never_a_traceback(tiny_run, tmp_path, capsys, command, option, value):
    argv = bases(tiny_run, tmp_path)[command]
    if option in argv:  # replace the base's own value
        i = argv.index(option)
        argv = argv[:i] + argv[i + 2:]
    capsys.readouterr()
    try:
        code = main([*argv, option, value])
    except SystemExit as exit:  # argparse's own refusal
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.count("\n") == 0 and err.startswith("dreamlet: error:") and "Traceback" not in err, err


# ------------------------------------------------------------------------- paths

PATH_OPTIONS = {
    "train": ["--data", "--init-from", "--text-encoder", "--base", "--autoencoder", "--out"],
    "sample": ["--model", "--from-png", "--prompts-file", "--init-image", "--mask", "--out", "--grid", "--clip"],
    "eval": ["--model", "--clip", "--data", "--inception", "--out"],
    "compare": ["RUNS", "--out"],
    "data": ["PATH", "--sheet"],
}
BAD_PATHS = ["missing", "folder", "garbage file", "empty file", "picture"]


def bad_path(kind: str, tmp_path) -> str:
    import numpy as np
    from PIL import Image
    folder = tmp_path / "a folder"
    folder.mkdir(exist_ok=True)
    (folder / "junk.bin").write_bytes(b"\x00junk")
    paths = {"missing": tmp_path / "nope" / "nothing", "folder": folder, "garbage file": tmp_path / "garbage.png",
             "empty file": tmp_path / "empty.txt", "picture": tmp_path / "picture.png"}
    paths["garbage file"].write_bytes(np.random.default_rng(0).bytes(300))
    paths["empty file"].write_bytes(b"")
    Image.new("RGB", (8, 8), (200, 0, 0)).save(paths["picture"])
    return str(paths[kind])


PATH_CASES = [(c, o, k) for c, options in PATH_OPTIONS.items() for o in options for k in BAD_PATHS]


@pytest.mark.parametrize("command, option, kind", PATH_CASES, ids=[f"{c} {o} {k}" for c, o, k in PATH_CASES])
def test_a_bad_path_is_one_line_and_exit_2_never_a_traceback(tiny_run, tmp_path, capsys, command, option, kind):
    value = bad_path(kind, tmp_path)
    if option == "RUNS":
        argv = ["compare", value, "--out", str(tmp_path / "c")]
    elif option == "PATH":
        argv = ["data", "inspect", value, "--size", "16", "--sheet", str(tmp_path / "sheet.png")]
    else:
        argv = bases(tiny_run, tmp_path)[command]
        if option in argv:
            i = argv.index(option)
            argv = argv[:i] + argv[i + 2:]
        if option == "--from-png":  # it replaces the prompt
            i = argv.index("--prompt")
            argv = argv[:i] + argv[i + 2:]
        argv = [*argv, option, value]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.count("\n") == 0 and err.startswith("dreamlet: error:"), err
