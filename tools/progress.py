"""The CLI's progress bar: rich on a terminal, a plain line with an estimate in a log."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["LoggedProgress", "progress_bar", "steps"]


class LoggedProgress(Progress):
    """A rich progress bar that also reports to a log.

    When the console is not a terminal (rich then draws nothing until the
    end), a plain line with the estimate every ``log_every`` seconds and when
    a task finishes.
    """

    log_every = 15.0

    def __init__(self, *columns: Any, **kw: Any) -> None:
        super().__init__(*columns, **kw)
        self._logged: dict[TaskID, float] = {}

    def update(self, task_id: TaskID, **kw: Any) -> None:
        """See :meth:`rich.progress.Progress.update`; logs when not on a terminal."""
        super().update(task_id, **kw)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        """See :meth:`rich.progress.Progress.advance`; logs when not on a terminal."""
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        if self.console.is_terminal:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        last = self._logged.setdefault(task_id, now)
        if now - last < self.log_every and not task.finished:
            return
        if task.finished and last < 0:  # the finished line is printed once
            return
        self._logged[task_id] = -1.0 if task.finished else now
        done = f"{task.completed:g}" + ("" if task.total is None else f"/{task.total:g}")
        left = task.time_remaining
        eta = "" if left is None or task.finished else f", about {left:.0f} s left"
        self.console.print(
            f"{task.description}: {done}, {task.elapsed or 0:.0f} s{eta}", highlight=False
        )


def progress_bar(console: Console) -> Progress:
    """The CLI's progress bar: description, bar, n/total, elapsed, estimate left."""
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@contextmanager
def steps(console: Console, title: str, total: int) -> Iterator[Callable[[str], None]]:
    """A bar over ``total`` named steps; yields ``step(name)`` to call as each one ends."""
    with progress_bar(console) as bar:
        task = bar.add_task(title, total=total)

        def step(name: str) -> None:
            bar.update(task, advance=1, description=f"{title}: {name}")

        yield step
