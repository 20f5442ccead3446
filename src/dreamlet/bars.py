"""Progress bars that read well wherever they go: tqdm's redrawn bar on a terminal, and elsewhere (CI,
`nohup`, `> log`) a plain line about every 30 seconds instead of a redraw at every step."""
from __future__ import annotations

import sys

from tqdm import tqdm

PLAIN_EVERY_S = 30.0


class Lines:
    """A file for tqdm that turns its redraws (carriage return, line) into whole lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(stream=None, **options) -> tqdm:
    """tqdm on `stream` (stderr): as it is on a terminal; elsewhere one plain line at most every
    PLAIN_EVERY_S seconds, and the last one when the bar closes."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(file=stream, dynamic_ncols=True, **options)
    return tqdm(file=Lines(stream), ncols=120, **(options | {"mininterval": PLAIN_EVERY_S, "maxinterval": 1e9}))
