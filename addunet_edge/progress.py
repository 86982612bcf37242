"""The one progress bar of long library work (calibration, validation, benchmarking, QAT), on stderr."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool, *, status: bool = False, unit: str | None = None, transient: bool = True) -> Any:
    """A rich bar (description, bar, n/total, elapsed) on stderr, out of stdout's tables; gone when done.

    `status` adds a text column fed by each task's `status` field (a loss, frames per second); `unit` counts
    work of unknown size ("1234 frames") instead of n/total.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    if unit is not None:
        columns = [SpinnerColumn(), *columns, TextColumn(f"{{task.completed}} {unit}")]
    else:
        columns.append(MofNCompleteColumn())
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    columns.append(TimeElapsedColumn())
    console = Console(stderr=True)
    # Redirected to a file or a CI log, a live bar cannot redraw: it would only leave blank lines there.
    return Progress(*columns, console=console, transient=transient, disable=not (enabled and console.is_terminal))
