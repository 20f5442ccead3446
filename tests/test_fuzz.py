"""A fuzz test of the command line: every number option of train, sample, eval, compare and data inspect, given
values a user may type by mistake (negative, zero, huge, NaN, infinite, empty, not a number), exits 0 (a value
that is fine) or 2 with one line on stderr: never a traceback. Bases are cheap, so an accepted value costs one
training step or one tiny drawing."""
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
            "data": ["data", "inspect", "shapes", "--size", "16", "--sheet", str(tmp_path / "sheet.png")]}


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
