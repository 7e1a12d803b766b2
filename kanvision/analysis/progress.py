"""Progress and time estimates for the long loops of `kanvision analyze`, written to stderr.

stdout carries the results (tables, paths) that scripts read, so every line here goes to stderr. On a
terminal each phase is a rich progress bar (description, count, elapsed, remaining). Anywhere else
(nohup, CI, a pipe, pytest's capture) a redrawn bar would fill the log with control codes, so a phase
prints one line when it starts, one when it ends, and in between a line each time another ~10% is done
or 30 s have passed since the last line, with the elapsed time and the estimate.

Estimates are measured, never assumed: remaining = (elapsed / steps done) x steps left, from the
phase's own steps. Reporting reads the clock and writes text only; it never touches tensors or seeds.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

__all__ = ["Reporter", "Phase", "format_duration"]


def format_duration(seconds: float) -> str:
    """Short human duration: '42 s', '3.5 min', '1.2 h'."""
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Phase:
    """One long loop: `advance()` after each step; `estimate()` gives (elapsed, remaining or None).

    `bound=True`: `total` is an upper bound (the loop may stop earlier), so the estimate is one too.
    """

    def __init__(self, reporter: "Reporter", description: str, total: int | None, unit: str, bound: bool = False):
        self.reporter, self.description, self.total, self.unit = reporter, description, total, unit
        self.bound = bound
        self.done = 0
        self.detail = ""
        self.start = reporter.clock()
        self._last_line = self.start
        self._next_tenth = 1  # integer tenths: 0.1 added up drifts past 0.3 and skips a line
        self._task = None

    def elapsed(self) -> float:
        return self.reporter.clock() - self.start

    def estimate(self) -> tuple[float, float | None]:
        elapsed = self.elapsed()
        if not self.done or self.total is None:
            return elapsed, None
        return elapsed, elapsed / self.done * max(self.total - self.done, 0)

    def advance(self, steps: int = 1, detail: str | None = None) -> None:
        self.done += steps
        if self.total is not None and self.done > self.total:
            self.total = self.done  # an upper bound that was passed: keep the bar honest
        if detail is not None:
            self.detail = detail
        self.reporter._advanced(self)

    def label(self) -> str:
        text = f"{self.description}: {self.detail}" if self.detail else self.description
        # The bar's count shows only done/total: say in words when the total is a bound.
        return f"{text} (at most {self.total})" if self.bound and self.reporter.interactive else text

    def count(self) -> str:
        if self.total is None:
            return f"{self.done} {self.unit}s"
        return f"{self.done}/{'at most ' if self.bound else ''}{self.total} {self.unit}s"


class Reporter:
    """Phases of one `kanvision analyze` run; `enabled=False` (--no-progress) makes every call a no-op.

    `interactive` defaults to whether the stream is a terminal; `clock` is injectable for tests.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, interactive: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, min_interval: float = 30.0):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive and enabled
        self.clock = clock
        self.min_interval = min_interval
        self._progress = None

    def __enter__(self) -> "Reporter":
        if self.interactive:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            # A low refresh rate: the redraw thread shares the CPU with the timings being measured.
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                                      MofNCompleteColumn(), TextColumn("{task.fields[unit]}s elapsed"),
                                      TimeElapsedColumn(),
                                      TextColumn("left"), TimeRemainingColumn(),
                                      console=Console(file=self.stream), refresh_per_second=2)
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, text: str) -> None:
        """One line (an up-front estimate, a summary) above the bars, or in the log."""
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            self._line(text)

    @contextmanager
    def phase(self, description: str, total: int | None = None, unit: str = "step",
              bound: bool = False) -> Iterator[Phase]:
        p = Phase(self, description, total, unit, bound)
        if self._progress is not None:
            p._task = self._progress.add_task(p.label(), total=total, unit=unit)
        elif self.enabled:
            size = (f"{'at most ' if bound else ''}{total} {unit}s" if total is not None
                    else f"{unit}s: count not known in advance")
            self._line(f"{description}: started ({size})")
        try:
            yield p
        finally:
            self._finish(p)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _advanced(self, p: Phase) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(p._task, completed=p.done, total=p.total, description=p.label())
            return
        now = self.clock()
        due = now - p._last_line >= self.min_interval
        if p.total:
            crossed = 10 * p.done >= p._next_tenth * p.total
            while 10 * p.done >= p._next_tenth * p.total:
                p._next_tenth += 1
            due = due or crossed
        if due and (p.total is None or p.done < p.total):  # the end line reports the last step
            p._last_line = now
            elapsed, remaining = p.estimate()
            about = "at most" if p.bound else "about"
            left = f", {about} {format_duration(remaining)} left" if remaining is not None else ""
            self._line(f"{p.label()}: {p.count()}, {format_duration(elapsed)} elapsed{left}")

    def _finish(self, p: Phase) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            # Leave the finished bar in place; its total becomes what actually ran.
            self._progress.update(p._task, completed=p.done, total=p.done or p.total, description=p.description)
            return
        elapsed = p.elapsed()
        each = f" ({format_duration(elapsed / p.done)} per {p.unit})" if p.done else ""
        self._line(f"{p.description}: done, {p.done} {p.unit}s in {format_duration(elapsed)}{each}")
