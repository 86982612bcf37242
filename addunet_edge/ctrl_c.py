"""Ctrl-C in the CLI: whether Python's own SIGINT handling is in charge here, and a record that Ctrl-C came.

A command must exit 130 on Ctrl-C even where the KeyboardInterrupt itself is lost: C++ code that calls back
into Python can replace a pending KeyboardInterrupt by an error of its own with no chain to it (Ctrl-C
inside safetensors' load came out of torch as "could not determine the shape of object type
'torch.storage.UntypedStorage'", found by the interruption soak, and `train --resume` then called its intact
state unreadable). `noting_ctrl_c` installs a handler that raises KeyboardInterrupt as Python's does and
also sets an event the CLI reads when an error ends the command.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class _RaiseAndNote:
    """Python's Ctrl-C (KeyboardInterrupt), which also sets `seen`."""

    def __init__(self, seen: threading.Event) -> None:
        self.seen = seen

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.seen.set()
        signal.default_int_handler(signum, frame)


def python_handles_ctrl_c() -> bool:
    """Whether Ctrl-C raises KeyboardInterrupt here: the main thread, under Python's handler or ours (not
    where SIGINT is ignored, as in a suite started from a background shell, or handled by someone else)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGINT)
    return handler is signal.default_int_handler or isinstance(handler, _RaiseAndNote)


@contextlib.contextmanager
def noting_ctrl_c(seen: threading.Event) -> Iterator[None]:
    """Within the block, Ctrl-C raises KeyboardInterrupt as usual and sets `seen`; elsewhere nothing changes."""
    if not python_handles_ctrl_c():
        yield
        return
    previous = signal.signal(signal.SIGINT, _RaiseAndNote(seen))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
