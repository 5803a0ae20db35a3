"""Progress for people: rich bars on a terminal, plain timestamped lines in CI and logs.

On a terminal every tracked step gets a bar with ETA. Anywhere else (CI, `> log.txt`) there are no
bars and no control characters: one line when a step starts and, for long steps, a line every
`interval` seconds with the count, percentage and ETA. `quiet` prints nothing; `verbose` adds a
"done" line with the duration of every step, progress lines every few seconds, and the debug log
of dermabench and its plugins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichBars

from dermabench.api import Progress

T = TypeVar("T")
LOGGERS = ("dermabench", "dermabench_plugins")


class ConsoleProgress(Progress):
    """Bars with ETA when stderr is a terminal; otherwise one line per step. `quiet` prints nothing."""

    def __init__(
        self,
        quiet: bool = False,
        console: Console | None = None,
        verbose: bool = False,
        interval: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.bars = self.console.is_terminal and not quiet
        #: seconds between progress lines when there are no bars
        self.interval = interval if interval is not None else (5.0 if self.verbose else 30.0)
        self.clock = clock
        self.start = clock()
        if self.verbose:
            _show_debug_log(self)

    def log(self, message: str) -> None:
        if not self.quiet:
            stamp = f"[dim]{self.clock() - self.start:7.1f}s[/dim]"
            self.console.print(f"{stamp} {escape(message)}", highlight=False)

    def track(self, iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        began = self.clock()
        if self.quiet:
            yield from iterable
            return
        if not self.bars:
            yield from self._track_lines(iterable, description, total, began)
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        count = 0
        with RichBars(*columns, console=self.console, transient=True) as bars:
            task = bars.add_task(description, total=total)
            for item in iterable:
                yield item
                count += 1
                bars.advance(task)
        self.log(f"{description}: done" + (f" ({count} in {self.clock() - began:.1f} s)" if self.verbose else ""))

    def _track_lines(self, iterable: Iterable[T], description: str, total: int | None, began: float) -> Iterator[T]:
        self.log(description)
        count, last = 0, began
        for item in iterable:
            yield item
            count += 1
            now = self.clock()
            if now - last >= self.interval:
                last = now
                self.log(f"{description}: {_count_text(count, total, now - began)}")
        if self.verbose or last != began:  # a long step says when it ended
            self.log(f"{description}: done ({count} in {self.clock() - began:.1f} s)")


def _count_text(count: int, total: int | None, elapsed: float) -> str:
    if not total:
        return f"{count} done, {elapsed:.0f} s"
    eta = elapsed / max(count, 1) * (total - count)
    return f"{count}/{total} ({100 * count / total:.0f} %), {elapsed:.0f} s, ETA {eta:.0f} s"


class _ConsoleHandler(logging.Handler):
    def __init__(self, progress: ConsoleProgress) -> None:
        super().__init__(logging.DEBUG)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.log(f"{record.levelname.lower()} {record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 (logging must never break a run)
            self.handleError(record)


def _show_debug_log(progress: ConsoleProgress) -> None:
    """Route the debug log of dermabench and its plugins to this console (once; a newer console replaces it)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
            logger.removeHandler(handler)
        logger.addHandler(_ConsoleHandler(progress))
        logger.setLevel(logging.DEBUG)
