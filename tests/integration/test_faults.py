"""Fault injection: kill -9 and Ctrl-C at random moments in every writing command, a full disk, two writers.

After every interruption each artifact on disk either loads and is right (its outputs equal those of an
uninterrupted run's copy, or its (epoch, weights hash) is one an uninterrupted run wrote) or is refused with a
package error; `train --resume` always continues (last/ keeps a complete state through any kill) and ends
where an uninterrupted run ends. Each interruption is one fresh CLI process (faults_harness.py says how).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faults_harness import CHILD_ENV, Soak, kill_all, make_shared, quotas, run_onnx

# CI's form: >= 200 interruptions in a few minutes on 2 cores. ADDUNET_FAULTS_SOAK_LONG=1: five times as many.
INTERRUPTIONS = 1050 if os.environ.get("ADDUNET_FAULTS_SOAK_LONG") else 210


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs every command reads: digits, a trained checkpoint, its fp32 ONNX and a few images."""
    return make_shared(tmp_path_factory.mktemp("faults-shared"))


def test_interruptions_never_leave_an_artifact_that_loads_but_is_wrong(shared: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    soak = Soak(shared, tmp_path, quotas(INTERRUPTIONS), seed=20260529)
    try:
        soak.setup()  # one uninterrupted reference run per verb, watched: how long it takes, when it writes
        assert not soak.failures, "\n\n".join(soak.failures)
        setup_s = time.perf_counter() - t0
        soak.run()  # the interruptions, two commands at a time, and one last uninterrupted run per verb
    finally:
        kill_all()
    summary = {"elapsed_s": round(time.perf_counter() - t0, 1), "setup_s": round(setup_s, 1), **soak.summary()}
    print(json.dumps(summary, indent=1))
    assert not soak.failures, "\n\n".join(soak.failures[:5])
    totals = summary["totals"]
    assert totals["wrong"] == 0, summary
    assert totals["interruptions"] >= 200, summary
    assert all(summary["interruptions"][v] >= q for v, q in quotas(INTERRUPTIONS).items()), summary
    assert totals["ok"] > 0 and totals["kill"] > 20 and totals["sigint"] > 20, summary
    # Nothing lost: every training run, however often it was killed and resumed, ends on the same weights as
    # the uninterrupted one; and none had to start again (last/ always held a state to resume).
    finals = soak.finals()
    assert soak.ref is not None and finals and set(finals) == {soak.ref.final}, summary
    assert all("resume refused" not in lane.counts for lane in soak.lanes.values()), summary


def test_ctrl_c_that_a_library_turned_into_an_error_of_its_own_still_exits_130() -> None:
    """Found by the soak: Ctrl-C inside torch.onnx.export's first import of torch._dynamo came out as
    "TorchExportError: Failed to export the model" (AttributeError on the half-imported module), exit 1."""
    import types

    import typer
    from typer.testing import CliRunner

    from addunet_edge.cli._common import command

    app = typer.Typer()

    def library_call(ctrl_c: bool) -> None:
        half_imported = types.SimpleNamespace()
        try:
            try:
                if ctrl_c:
                    raise KeyboardInterrupt
                raise ValueError("a real failure")
            except half_imported.exc.UserError:  # AttributeError, with the KeyboardInterrupt as its context
                pass
        except Exception as e:
            raise RuntimeError("Failed to export the model") from e

    @command(app, "interrupted")
    def interrupted() -> None:
        library_call(ctrl_c=True)

    @command(app, "broken")
    def broken() -> None:
        library_call(ctrl_c=False)

    result = CliRunner().invoke(app, ["interrupted"])
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Failed to export" not in result.output
    result = CliRunner().invoke(app, ["broken"])
    assert isinstance(result.exception, RuntimeError)  # a failure with no Ctrl-C behind it stays a failure


def test_an_error_that_replaced_a_ctrl_c_without_a_trace_still_exits_130() -> None:
    """Found by the soak: Ctrl-C inside safetensors' load came out of torch as "could not determine the shape
    of object type 'torch.storage.UntypedStorage'" with no chain to the KeyboardInterrupt, and `train
    --resume` called its intact state unreadable (exit 2)."""
    import signal

    import typer
    from typer.testing import CliRunner

    from addunet_edge.cli._common import command

    app = typer.Typer()

    @command(app, "interrupted")
    def interrupted() -> None:
        try:  # C++ code calling back into Python: the KeyboardInterrupt is dropped ...
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass
        # ... and an error of its own is raised, outside the except block: no __context__ to follow
        raise TypeError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    @command(app, "broken")
    def broken() -> None:
        raise TypeError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    before = signal.getsignal(signal.SIGINT)
    result = CliRunner().invoke(app, ["interrupted"])
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "could not determine" not in result.output
    assert signal.getsignal(signal.SIGINT) is before  # the handler is the command's only
    result = CliRunner().invoke(app, ["broken"])
    assert isinstance(result.exception, TypeError)  # with no Ctrl-C, a failure stays a failure


# == a full disk ==========================================================================================


def test_a_full_disk_during_a_write_leaves_the_previous_artifact_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from addunet_edge import artifacts
    from addunet_edge.errors import ArtifactError

    target = tmp_path / "state.json"
    artifacts.atomic_write_json(target, {"version": 1})
    before = target.read_bytes()
    real_write = os.write

    def full_disk_write(path: Path, data: bytes) -> None:
        # Half the bytes land, then the disk is full: what a real ENOSPC in the middle looks like.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        finally:
            os.close(fd)

    monkeypatch.setattr(Path, "write_bytes", full_disk_write)
    with pytest.raises(ArtifactError, match=r"No space left on device.*previous file, if any, is untouched"):
        artifacts.atomic_write_json(target, {"version": 2, "padding": "x" * 10_000})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "a temporary file was left behind"


def test_a_file_size_limit_during_export_fails_clearly_and_keeps_the_old_onnx(shared: Path, tmp_path: Path) -> None:
    import resource

    out = tmp_path / "model.fp32.onnx"
    shutil.copy(shared / "model.fp32.onnx", out)
    shutil.copy(shared / "model.fp32.onnx.manifest.json", tmp_path / "model.fp32.onnx.manifest.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    limit = out.stat().st_size // 2  # the new ONNX cannot be written in full

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "addunet_edge", "export", str(shared / "ckpt"), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, **CHILD_ENV},
        preexec_fn=limit_file_size,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "could not write" in done.stderr and "File too large" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".addunet-edge.lock")}
    assert after == before


# == two writers, one folder ==============================================================================


def test_a_second_writer_into_a_locked_folder_is_refused_with_exit_code_5(shared: Path, tmp_path: Path) -> None:
    from addunet_edge.artifacts import output_lock

    out = tmp_path / "model.fp32.onnx"
    cmd = [sys.executable, "-m", "addunet_edge", "export", str(shared / "ckpt"), "--out", str(out)]
    env = {**os.environ, **CHILD_ENV}
    with output_lock(tmp_path):
        held = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert held.returncode == 5, held.stdout + held.stderr
    assert "another addunet-edge run is writing into" in held.stderr
    assert not out.exists()
    # Both at once: whichever takes the lock first writes; the other is refused and writes nothing.
    for _attempt in range(3):
        procs = [
            subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
            for _ in range(2)
        ]
        codes = sorted(p.wait(timeout=300) for p in procs)
        errs = [p.stderr.read() for p in procs if p.stderr is not None]
        assert codes in ([0, 5], [0, 0]), (codes, errs)
        if codes == [0, 5]:
            assert any("another addunet-edge run is writing into" in e for e in errs), errs
            break
    else:
        pytest.fail("the two exports never overlapped in three tries: the lock was not exercised")
    from addunet_edge.artifacts import read_manifest

    assert read_manifest(out, required=True)["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert np.array_equal(
        run_onnx(out, np.ones((1, 1, 8, 8), np.float32))[0],
        run_onnx(shared / "model.fp32.onnx", np.ones((1, 1, 8, 8), np.float32))[0],
    )


def test_the_lock_is_released_and_reusable(tmp_path: Path) -> None:
    from addunet_edge.artifacts import output_lock
    from addunet_edge.errors import LockError

    with output_lock(tmp_path), pytest.raises(LockError, match="another addunet-edge run"), output_lock(tmp_path):
        pass
    assert not (tmp_path / ".addunet-edge.lock").exists()
    with output_lock(tmp_path):
        assert (tmp_path / ".addunet-edge.lock").read_text() == str(os.getpid())
