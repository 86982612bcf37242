"""Ctrl-C in the CLI: whether Python's own SIGINT handling is in charge here, and a record that Ctrl-C came.

A command must exit 130 on Ctrl-C even where the KeyboardInterrupt itself is lost: C++ code that calls back
into Python can replace a pending KeyboardInterrupt by an error of its own with no chain to it (Ctrl-C
inside safetensors' load came out of torch as "could not determine the shape of object type
'torch.storage.UntypedStorage'", found by the interruption soak, and `train --resume` then called its intact
state unreadable). `noting_ctrl_c` installs a handler that raises KeyboardInterrupt as Python's does and
also sets an event the CLI reads when an error ends the command. `ctrl_c_deferred` holds Ctrl-C back over
work that must not stop half done: a frame written and counted, and the import of a native module (a
KeyboardInterrupt raised inside onnx's extension-module init crashed the process, exit -11, in the soak).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

RETRY_S = 0.05  # how soon a Ctrl-C that came during an import is tried again


def _inside_import(frame: FrameType | None) -> bool:
    """Whether `frame` runs inside an import (importlib's frozen bootstrap is on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


class _RaiseAndNote:
    """Python's Ctrl-C (KeyboardInterrupt), which also sets `seen`; during an import it comes a little later.

    A KeyboardInterrupt raised while a native module initialises kills the process: inside torch's pybind11
    init it became std::terminate (SIGABRT), inside onnx's a SIGSEGV (both found by the interruption soak).
    So a Ctrl-C that arrives inside an import is sent again every RETRY_S seconds until it lands outside one.
    """

    def __init__(self, seen: threading.Event) -> None:
        self.seen = seen

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.seen.set()
        if _inside_import(frame):
            retry = threading.Timer(RETRY_S, os.kill, (os.getpid(), signal.SIGINT))
            retry.daemon = True
            retry.start()
            return
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


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then raise it: for work that must not stop half done.

    Python raises KeyboardInterrupt at the first line after a C call returns; after cv2 has written a frame,
    that line is the one that counts it, and a Ctrl-C during the encode would leave the file holding a frame
    the summary does not (it did, in a test). So writing, counting and recording a frame go together.
    Only in the main thread, and only over Python's own SIGINT handling: anything else is left alone.
    """
    if not python_handles_ctrl_c():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:  # raised even over an error of the block's own: the user asked to stop
            raise KeyboardInterrupt


def caused_by_ctrl_c(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `error`.

    A library that catches broadly can turn Ctrl-C into an error of its own: torch.onnx.export, interrupted
    inside its first import of torch._dynamo, evaluates `except torch._dynamo.exc.UserError` on the half-imported
    module (an AttributeError) and reports "Failed to export the model" (TorchExportError).
    """
    todo, seen = [error], set()
    while todo:
        e = todo.pop()
        if isinstance(e, KeyboardInterrupt):
            return True
        if id(e) not in seen:
            seen.add(id(e))
            todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return False
