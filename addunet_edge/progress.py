"""The one progress bar of long library work (calibration, validation, benchmarking, QAT), on stderr."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool) -> Any:
    """A transient rich bar (description, bar, n/total, elapsed) that stays out of stdout's tables."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )
