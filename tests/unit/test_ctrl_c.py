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


def test_ctrl_c_inside_any_import_during_a_command_lands_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the soak: Ctrl-C inside torch's pybind11 init (an `import torch` in a command, not through
    require) became std::terminate, SIGABRT. Under a command's handler the Ctrl-C is tried again until it
    lands outside the import; the command then exits 130."""
    import threading

    import typer
    from typer.testing import CliRunner

    from addunet_edge.cli._common import command

    (tmp_path / "slow_native_2.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.3)  # retried Ctrl-Cs arrive here too: all of them must wait for the import's end\n"
        "FINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = typer.Typer()
    reached: list[str] = []

    @command(app, "importing")
    def importing() -> None:
        import slow_native_2  # noqa: F401  (a plain import statement, as in a command body)

        reached.append("imported")
        threading.Event().wait(5)  # the retried Ctrl-C lands here

    @command(app, "other")
    def other() -> None:  # a second command, so that the app is a group and "importing" a command name
        pass

    result = CliRunner().invoke(app, ["importing"])
    assert result.exit_code == 130, result.output
    assert reached == ["imported"] and sys.modules["slow_native_2"].FINISHED is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    del sys.modules["slow_native_2"]
