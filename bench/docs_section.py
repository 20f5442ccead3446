"""Writing a benchmark's figures into docs/benchmarks.md between its own markers, so a rerun
replaces them and leaves the rest of the page (and the notes written under it) as it is."""
from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(name: str, heading: str, table: str, docs: Path = DOCS) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n\n{table}\n\n{end}"
    text = docs.read_text()
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += f"\n## {heading}\n\n{block}\n"
    docs.write_text(text)


def command_line(script: str, argv: list[str]) -> str:
    """The command a figure came from: this script's, and bench/run_all.py's when that one ran it."""
    import os
    import shlex
    own = " ".join(["python", f"bench/{script}"] + [shlex.quote(a) for a in argv])
    outer = os.environ.get("DREAMLET_BENCH_COMMAND")
    return f"{outer} (which ran: {own})" if outer else own


def save_figure(figure, path: Path, title: str) -> None:
    """A benchmark's matplotlib figure, titled with where it was measured, written for the docs."""
    import matplotlib.pyplot as plt
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine(threads: str | None = None) -> str:
    """The machine a figure came from: processor, cores, torch and its threads, GPU (every bench/ script's).
    `threads` says how the runs used the cores when they were not this process (e.g. "1 thread per run")."""
    import os
    import platform

    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    threads = threads or f"{torch.get_num_threads()} threads"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads}), {gpu}"


def commit() -> str:
    """The commit a figure came from, with "+changes" when the work tree differed from it."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def keep_results(where: str | Path, command: str, rows: list, threads: str | None = None, **extra) -> dict:
    """A section's figures, with the date, machine, commit and command that made them (every figure the docs
    publish keeps its raw result), written to bench/results/WHERE.json for a name, or to WHERE for a path;
    returns what was written."""
    import json
    import time
    path = where if isinstance(where, Path) else Path(__file__).resolve().parent / "results" / f"{where}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = dict(date=time.strftime("%Y-%m-%d"), machine=machine(threads), commit=commit(), command=command, **extra,
                rows=rows)
    path.write_text(json.dumps(kept, indent=2, default=str) + "\n")
    return kept


def add_row(path: str | Path, row: dict, script: str, argv: list[str]) -> None:
    """Add one row (replacing the row of the same name) to a results file that collects rows measured one
    at a time, each with its own date, machine, commit and command."""
    import json
    import time
    path = Path(path)
    kept = json.loads(path.read_text()) if path.exists() else {"rows": []}
    kept["rows"] = [r for r in kept["rows"] if r["name"] != row["name"]] + [
        row | dict(date=time.strftime("%Y-%m-%d"), machine=machine(), commit=commit(), command=command_line(script, argv))]
    path.write_text(json.dumps(kept, indent=2) + "\n")
