"""Ctrl-C during the import of a module the package needs lands after the import, never inside it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from addunet_edge._lazy import require


def test_ctrl_c_during_a_required_import_is_raised_once_the_import_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the soak: a KeyboardInterrupt raised inside onnx's extension-module init crashed the process
    (SIGSEGV). The stand-in module gets its Ctrl-C in the middle of its body, as onnx did in its C init."""
    (tmp_path / "slow_native.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)  # the signal is pending here: Python would raise it at the next bytecode\n"
        "FINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        require("slow_native", "the test")
    assert sys.modules["slow_native"].FINISHED is True  # the import ran to its end before the Ctrl-C
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    del sys.modules["slow_native"]


def test_without_ctrl_c_a_required_import_is_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "quiet_native.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert require("quiet_native", "the test").VALUE == 1
    assert os.getpid() > 0 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    del sys.modules["quiet_native"]
