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
