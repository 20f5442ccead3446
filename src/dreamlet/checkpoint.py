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
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad prompt): shown as one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM ended a run; its checkpoint was saved first."""

    def __init__(self, signal_number: int, step: int, out: Path):
        import signal
        self.signal_number, self.step, self.exit_code = signal_number, step, 128 + signal_number
        super().__init__(f"{signal.Signals(signal_number).name} at step {step}: checkpoint saved; "
                         f"continue with --resume --out {out}")


@contextmanager
def exclusive(target: Path, purpose: str):
    """Hold an exclusive lock named after `target` (the file .TARGET.PURPOSE.lock beside it) while the
    block runs: another process that asks for the same lock waits. The kernel drops the lock when its
    process ends, so a crash never leaves it held. Where there is no fcntl (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.{purpose}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_dir_atomically(target: Path, write) -> None:
    """Call write(tmp_dir), then swap tmp_dir into place, so a crash never leaves half a directory.

    The files are on disk (fsync) before the swap, or a power cut could leave a complete-looking
    directory of empty files. The swap is two renames, target -> .target.old and tmp -> target: a
    crash between them leaves the previous directory in .target.old, which `restore_interrupted`
    (called here and by every reader) puts back."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted(target)
    for stale in target.parent.glob(f".{target.name}.tmp*"):  # left by a crash, never by a process still writing
        if not writer_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))  # whose it is
    try:
        write(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync(path)
        fsync(tmp)
        old = old_copy(target)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        fsync(target.parent)  # the renames themselves
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def writer_alive(tmp: Path) -> bool:
    """Whether the process that made this temporary directory (.NAME.tmp-PID-...) is still running: another
    process's save in progress is left alone."""
    try:
        pid = int(tmp.name.split(".tmp-", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):  # an older name, without its writer's pid
        return False
    if pid == os.getpid():
        return False  # this process writes one at a time: one of its own is a leftover
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def old_copy(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def restore_interrupted(target: Path) -> None:
    """Put back the previous directory when a crash came between write_dir_atomically's two renames."""
    target = Path(target)
    if not target.exists() and old_copy(target).is_dir():
        os.replace(old_copy(target), target)


def fsync(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():  # Windows cannot open a directory: its renames are as durable as NTFS makes them
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file. Its header is checked before any tensor is read, and a file
    that is not one (a pickle, a truncated or tampered file) is refused in one line: nothing is unpickled."""
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as error:
        raise UserError(f"cannot read {path}: {str(error).strip().splitlines()[0]}") from None


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
    """A JSON object from a file; anything else (not JSON, not an object, unreadable) is a UserError."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read {path}: expected a JSON object, found {type(data).__name__}")
    return data
