"""What a TensorRT plan build shows and hears on the terminal: rich progress (a bar per builder phase where
TensorRT reports its phases, a spinner otherwise) and Ctrl-C turned into a cancel request."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


def build_progress(console: Console | None, per_phase: bool) -> Progress:
    """A transient display on `console` (stderr by default); with `per_phase`, bars that count each phase's steps."""
    columns = (
        [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        if per_phase
        else [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
    )
    return Progress(*columns, console=console or Console(stderr=True), transient=True)


@contextlib.contextmanager
def cancel_on_sigint(cancel: threading.Event) -> Iterator[None]:
    """Turn Ctrl-C into a cancel request the progress monitor hands to TensorRT, which then stops cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
