"""A model card in every saved model directory (README.md, in the Hugging Face model-card style: a
YAML header, then prose): what the model is, what it was trained on, for how long and on what, how
well it scored (the latest eval.json beside it), a sample grid, and the lines that load it. It is
written from config.json each time the model is saved, and again when `dreamlet eval` reports on it."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

def hardware() -> str:
    """What a run trained on, in words: the GPU's name, or the CPU's core count."""
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def trained(step: int, seconds: float, processes: int) -> dict:
    """The facts about a run's training that its model directory keeps (config.json's "trained")."""
    return {"steps": step, "minutes": round(seconds / 60, 2), "hardware": hardware(), "processes": processes,
            "date": time.strftime("%Y-%m-%d")}


def latest_eval(run_dir: Path) -> dict | None:
    """The run's eval.json (where `dreamlet eval` writes it by default), when it is there and readable."""
    try:
        report = json.loads((run_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def figures(report: dict) -> list[tuple[str, str]]:
    """The report's top-level numbers, as (name, value) rows, in the report's own order."""
    rows = []
    for name, value in report.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rows.append((name, f"{value:.4g}" if isinstance(value, float) else str(value)))
    return rows


def card(meta: dict, model_dir: Path, samples: bool) -> str:
    """README.md's text for a model directory with config.json `meta`."""
    from .models import get_family
    family, data = meta.get("family", "?"), meta.get("data", "?")
    size = meta.get("model", {}).get("image_size", meta.get("size", "?"))
    draws = get_family(family).can_draw(get_family(family).load_config(meta["model"], meta.get("config_version")))
    facts = meta.get("trained") or {}
    header = ["---", "library_name: dreamlet", "tags:", "- dreamlet", f"- {family}"]
    header += ["- text-to-image", "pipeline_tag: text-to-image"] if draws else []
    header += ["datasets:", f"- {json.dumps(str(data))}", "---", ""]
    lines = [f"# {model_dir.parent.name if model_dir.name == 'model' else model_dir.name}", "",
             f"A dreamlet **{family}** model at {size} px, trained from scratch on `{data}`."]
    if facts:
        processes = f", {facts['processes']} processes" if facts.get("processes", 1) > 1 else ""
        lines += ["", "| trained | |", "|---|---|", f"| steps | {facts['steps']:,} |",
                  f"| time | {facts['minutes']:g} min |", f"| hardware | {facts['hardware']}{processes} |",
                  f"| date | {facts['date']} |", f"| dreamlet | {meta.get('dreamlet', '?')} |"]
    report = latest_eval(model_dir.parent)
    if report is not None:
        lines += ["", f"## Scores (`dreamlet eval`, {report.get('benchmark', 'eval')}: ../eval.json)", "",
                  "| figure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in figures(report)]
    if samples:
        lines += ["", "## Samples (the run's latest progress grid)", "", "![samples](samples.png)"]
    load = ['```python', 'import dreamlet', f'pipe = dreamlet.load("{model_dir}")']
    load += ['image = pipe("a caption like the training ones").images[0]', '```'] if draws else ['```']
    lines += ["", "## Use", ""] + load
    if draws:
        lines += ["", "```bash", f'dreamlet sample --model {model_dir} --prompt "a caption" --num 4 --out out/', "```"]
    return "\n".join(header + lines) + "\n"


def write_card(directory: Path, meta: dict, model_dir: Path | None = None) -> None:
    """README.md (and samples.png, the run's latest progress grid, when there is one) into `directory`,
    for the model directory `model_dir` (where it will live: `directory` may be its temporary copy)."""
    model_dir = Path(model_dir or directory).resolve()
    grids = sorted((model_dir.parent / "progress").glob("step_*.png")) if model_dir.name == "model" else []
    if grids:
        shutil.copyfile(grids[-1], directory / "samples.png")
    (directory / "README.md").write_text(card(meta, model_dir, bool(grids)), encoding="utf-8")
