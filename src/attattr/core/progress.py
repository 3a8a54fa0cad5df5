"""Progress of long work: a live bar with an ETA on a terminal, and, where the output goes to a
file or a pipe (a batch job's log), a plain line every LINE_INTERVAL seconds and at the end, so the
log shows how far a run got and how long it still needs."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LINE_INTERVAL = 15.0  # seconds between two lines when not on a terminal


def progress_display(console: Console, *, info: bool = False):
    """A context manager with rich's `add_task / advance / update` (fields: `info`, a trailing text)."""
    if not console.is_terminal:
        return LineProgress(console)
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=console, transient=False)


class LineProgress:
    """rich.Progress's small API, printing plain lines instead of redrawing a bar."""

    def __init__(self, console: Console, interval: float = LINE_INTERVAL):
        self.console = console
        self.interval = interval
        self._tasks: list[dict] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        for task in self._tasks:  # an interrupted task still says where it stopped
            if not task["final"] and task["done"]:
                self._print(task, time.monotonic())

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        now = time.monotonic()
        self._tasks.append(
            {"description": description, "total": total, "done": 0, "start": now, "last": now}
            | {"fields": fields, "final": False}
        )
        return len(self._tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, advance: float = 0, **fields) -> None:
        task = self._tasks[task_id]
        task["done"] += advance
        task["fields"].update(fields)
        now = time.monotonic()
        finished = task["total"] is not None and task["done"] >= task["total"]
        if (finished and not task["final"]) or now - task["last"] >= self.interval:
            self._print(task, now)
            task["last"] = now
            task["final"] = finished

    def _print(self, task: dict, now: float) -> None:
        done, total, elapsed = task["done"], task["total"], now - task["start"]
        line = f"{task['description']}: {done:g}"
        if total:
            line += f"/{total:g} ({100 * done / total:.0f} %)"
        line += f", elapsed {_clock(elapsed)}"
        if total and 0 < done < total:
            line += f", eta {_clock(elapsed / done * (total - done))}"
        info = task["fields"].get("info")
        if info:
            line += f", {info}"
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
