"""Saving and loading: weights as safetensors beside a JSON config, written atomically.

A model directory holds `config.json` (family, model config, training config), `model.safetensors`
(EMA weights) and `tokenizer.json`: everything needed to sample, nothing pickled. A training
checkpoint adds the live weights, the optimizer moments, the step and the random state.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad prompt): shown as one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM ended a run; its checkpoint was saved first."""

    def __init__(self, signal_number: int, step: int, out: Path):
        import signal
        self.exit_code = 128 + signal_number
        super().__init__(f"{signal.Signals(signal_number).name} at step {step}: checkpoint saved; "
                         f"continue with --resume --out {out}")


def write_dir_atomically(target: Path, write) -> None:
    """Call write(tmp_dir), then swap tmp_dir into place, so a crash never leaves half a directory."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors (for safetensors) and JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
