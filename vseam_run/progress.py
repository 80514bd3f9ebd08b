"""Progress with ETA for long loops: a rich bar in a terminal, a plain line in a log file.

In a terminal the bar updates live. When stderr is not a terminal (a log file, a batch
job) a bar would print nothing until the end, so a line ``label: 40/160 (25%), 2m 10s
elapsed, eta 6m 30s`` is written at the start, at least every `VSEAM_PROGRESS_EVERY`
seconds (default 30), and at the end. ``VSEAM_QUIET=1`` silences both, and the model
loading bars of transformers / huggingface_hub as well.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

DEFAULT_EVERY_S = 30.0


def quiet() -> bool:
    """VSEAM_QUIET=1, or a rank other than 0 under torchrun (rank 0 shows the progress)."""
    return os.environ.get("VSEAM_QUIET") == "1" or os.environ.get("RANK", "0") not in ("", "0")


def silence_libraries() -> None:
    """Turn off transformers' and huggingface_hub's own progress bars (weight loading) when quiet."""
    if not quiet():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with contextlib.suppress(Exception):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


class LineProgress:
    """Plain progress lines for non-terminals: one at start, one every `every` s, one at the end."""

    def __init__(self, description: str, total: int, stream: TextIO, every: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.total, self.stream, self.every, self.clock = description, total, stream, every, clock
        self.done = 0
        self.t0 = clock()
        self.last = self.t0
        self._write()

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = "?" if self.done == 0 else _clock(elapsed * (self.total - self.done) / self.done)
        return f"{self.description}: {self.done}/{self.total} ({pct:.0f}%), {_clock(elapsed)} elapsed, eta {eta}"

    def _write(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._write()

    def close(self) -> None:
        if self.clock() != self.last or self.done:
            self._write()


@contextlib.contextmanager
def progress(description: str, total: int, stream: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; a bar (terminal) or periodic lines (non-terminal) on stderr with ETA."""
    if quiet() or total <= 0:
        yield lambda n=1: None
        return
    out = stream or sys.stderr
    if not (hasattr(out, "isatty") and out.isatty()):
        every = float(os.environ.get("VSEAM_PROGRESS_EVERY", DEFAULT_EVERY_S))
        lines = LineProgress(description, total, out, every)
        try:
            yield lines.advance
        finally:
            lines.close()
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(file=out),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
