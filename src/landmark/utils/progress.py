"""Progress bars for long loops (rich): on a terminal by default, controlled by LANDMARK_PROGRESS."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)


def progress_enabled(requested: bool | None = None) -> bool:
    """On when asked for; otherwise on a terminal, or anywhere with LANDMARK_PROGRESS=1 (off with 0)."""
    if requested is not None:
        return requested
    env = os.environ.get("LANDMARK_PROGRESS")
    return env != "0" if env is not None else sys.stderr.isatty()


class Bar:
    """A handle to one task of a live progress display (a no-op when disabled)."""

    def __init__(self, progress: Progress | None, task: TaskID | None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(self, **fields) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **fields)


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool | None = None, completed: int = 0) -> Iterator[Bar]:
    """``with progress_bar("extract", n) as bar: ... bar.advance(k)``."""
    if not progress_enabled(enabled):
        yield Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield Bar(progress, task)
