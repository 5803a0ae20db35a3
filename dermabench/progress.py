"""Progress for people: rich bars on a terminal, plain timestamped lines in CI and logs."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichBars, TextColumn, TimeRemainingColumn

from dermabench.api import Progress

T = TypeVar("T")


class ConsoleProgress(Progress):
    """Bars with ETA when stderr is a terminal; otherwise one line per step. `quiet` prints nothing."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.quiet = quiet
        self.bars = self.console.is_terminal and not quiet
        self.start = time.perf_counter()

    def log(self, message: str) -> None:
        if not self.quiet:
            stamp = f"[dim]{time.perf_counter() - self.start:7.1f}s[/dim]"
            self.console.print(f"{stamp} {escape(message)}", highlight=False)

    def track(self, iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        if not self.bars:
            self.log(description)
            yield from iterable
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with RichBars(*columns, console=self.console, transient=True) as bars:
            task = bars.add_task(description, total=total)
            for item in iterable:
                yield item
                bars.advance(task)
        self.log(f"{description}: done")

