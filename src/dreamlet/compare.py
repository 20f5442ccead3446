"""`dreamlet compare`: the eval reports of several runs in one table and one plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .checkpoint import UserError

METRICS = [("seen", "seen single", True), ("heldout", "held-out single", True), ("pair", "pair", True),
           ("r_precision", "CLIP R-precision", False), ("clip_score", "CLIP score", False),
           ("fid", "FID (CLIP)", False)]


def find_report(path: Path) -> Path:
    if path.is_file() and path.suffix == ".json":
        return path
    for candidate in (path / "eval.json", path.parent / "eval.json"):
        if candidate.is_file():
            return candidate
    raise UserError(f"no eval report for {path}: run `dreamlet eval --model {path}/model` first, "
                    "or give a report .json")


def training_minutes(report: dict, report_path: Path) -> float | None:
    """Minutes of training of the model a report scored, from its run's train_log.csv."""
    model = Path(str(report.get("model", "")))
    for log in (model.parent / "train_log.csv", report_path.parent / "train_log.csv"):
        if log.is_file():
            try:
                with open(log, newline="", encoding="utf-8") as f:
                    rows = list(csv.DictReader(f))
                return float(rows[-1]["elapsed_s"]) / 60 if rows else None
            except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error):
                raise UserError(f"{log} is not a dreamlet training log (no readable elapsed_s column)") from None
    return None


def row(path: str | Path) -> dict:
    report_path = find_report(Path(path))
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{report_path} is not a JSON report") from None
    if not isinstance(report, dict) or not isinstance(report.get("judge", {}), dict):
        raise UserError(f"{report_path} is not a dreamlet eval report")
    judged = report.get("judge", report)  # a CLIP report on shapes carries the judge's report inside
    out = {"run": str(path), "minutes": training_minutes(report, report_path), "steps": report.get("steps")}
    for key, _, from_judge in METRICS:
        value = (judged if from_judge else report).get(key)
        out[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return out


def compare(runs: list[str], out: str | Path = "compare") -> tuple[list[dict], Path, Path]:
    """Rows for each run, written as OUT.md (a table) and OUT.png (each metric against training
    minutes and against sampling steps)."""
    if not runs:
        raise UserError("give at least one run directory or report")
    rows = [row(r) for r in runs]
    shown = [(k, label) for k, label, _ in METRICS if any(r[k] is not None for r in rows)]
    fmt = lambda k, v: "-" if v is None else f"{100 * v:.1f} %" if k in ("seen", "heldout", "pair") else \
        f"{v:.3f}" if k == "r_precision" else f"{v:.1f}"  # noqa: E731
    lines = ["| run | training min | sampling steps | " + " | ".join(label for _, label in shown) + " |",
             "|---" * (3 + len(shown)) + "|"]
    for r in rows:
        minutes = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
        lines.append(f"| {r['run']} | {minutes} | {r['steps'] or '-'} | "
                     + " | ".join(fmt(k, r[k]) for k, _ in shown) + " |")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md_path, png_path = out.with_suffix(".md"), out.with_suffix(".png")
    md_path.write_text("\n".join(lines) + "\n")
    _plot(rows, shown, png_path)
    return rows, md_path, png_path


def _plot(rows: list[dict], shown: list[tuple[str, str]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, x_key, x_label in ((axes[0][0], "minutes", "training minutes"), (axes[0][1], "steps", "sampling steps")):
        for key, label in shown:
            points = sorted((r[x_key], r[key]) for r in rows if r[x_key] is not None and r[key] is not None)
            if points:
                scale = 100 if key in ("seen", "heldout", "pair") else 1
                ax.plot([p[0] for p in points], [scale * p[1] for p in points], "o-", label=label)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy % / metric")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
