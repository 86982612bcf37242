"""Training end to end on tiny data: checkpoints, exact resume, DDP under torchrun, bad checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from addunet_edge.checkpoint import CONFIG, WEIGHTS, load_checkpoint, save_checkpoint
from addunet_edge.data import load_dataset
from addunet_edge.errors import CheckpointError, ConfigError
from addunet_edge.model import ModelConfig, build_model
from addunet_edge.training import TrainConfig, train
from addunet_edge.training_state import LAST, LOG, read_log, saved_state_dir

TINY = ModelConfig(width=8, depth=2, num_classes=10)


def _tc(**kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 16, "warmup_steps": 2, **kw})


def _state_dir(out: Path) -> Path:
    """The slot of out/last/ that --resume reads."""
    found = saved_state_dir(out)
    assert found is not None, f"{out} has no resume state"
    return found


def test_training_writes_checkpoint_log_and_improves(tiny_checkpoint: Path) -> None:
    _, meta = load_checkpoint(tiny_checkpoint)
    rows = read_log(tiny_checkpoint / LOG)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(len(r["gates"]) == 2 for r in rows)
    assert {"val_psnr_db", "val_ssim", "val_accuracy", "train_loss"} <= set(rows[0])
    test = meta["metrics"]["test"]
    assert test["psnr_db"] > test["noisy_psnr_db"] - 10  # sane, finite
    assert meta["model"] == TINY.to_dict()
    state_dir = _state_dir(tiny_checkpoint)
    assert state_dir.parent == tiny_checkpoint / LAST
    assert (state_dir / "optimizer.safetensors").exists()


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    save_checkpoint(tmp_path / "ck", model, note={"x": 1})
    loaded, meta = load_checkpoint(tmp_path / "ck")
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x), strict=True):
            assert torch.equal(a, b)
    assert meta["note"] == {"x": 1}


def test_resume_equals_uninterrupted_run(tmp_path: Path, digits_npz: Path) -> None:
    ds = load_dataset(digits_npz, size=16)
    train(TINY, _tc(epochs=3), ds, tmp_path / "full", progress=False)
    train(TINY, _tc(epochs=3), ds, tmp_path / "part", progress=False)
    # Interrupt after epoch 2: roll last/ back by retraining 2 of 3 epochs' worth of schedule.
    part = tmp_path / "part"
    state = json.loads((_state_dir(part) / "state.json").read_text())
    assert state["epoch"] == 2
    # Simulate the interruption: a run killed after epoch 1 leaves last/ at epoch index 1.
    killed = tmp_path / "killed"
    _train_until(ds, killed, epochs=3, stop_after=2)
    train(TINY, _tc(epochs=3), ds, killed, resume=True, progress=False)
    full = load_tensors_of(_state_dir(tmp_path / "full") / "model.safetensors")
    resumed = load_tensors_of(_state_dir(killed) / "model.safetensors")
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert [r["epoch"] for r in read_log(killed / LOG)] == [1, 2, 3]


def load_tensors_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _train_until(ds, out: Path, epochs: int, stop_after: int) -> None:
    """Run `train` and interrupt it (KeyboardInterrupt) once `stop_after` epochs are logged."""
    import addunet_edge.training as training

    real = training.append_log
    count = {"n": 0}

    def interrupting(path, record):
        real(path, record)
        count["n"] += 1

    def save_then_maybe_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        if count["n"] >= stop_after:
            raise KeyboardInterrupt

    real_save = training.save_last
    training.append_log, training.save_last = interrupting, save_then_maybe_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(TINY, _tc(epochs=epochs), ds, out, progress=False)
    finally:
        training.append_log, training.save_last = real, real_save


def test_resume_refuses_torn_last_checkpoint(tmp_path: Path, digits_npz: Path) -> None:
    ds = load_dataset(digits_npz, size=16)
    train(TINY, _tc(epochs=1), ds, tmp_path / "r", progress=False)
    # Damage after the save (a kill cannot do this: the slot being written is never the one resumed).
    (_state_dir(tmp_path / "r") / "optimizer.safetensors").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match=r"does not match state\.json"):
        train(TINY, _tc(epochs=2), ds, tmp_path / "r", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(TINY, _tc(epochs=2), ds, tmp_path / "fresh", resume=True, progress=False)


def test_mismatched_model_and_data_are_refused(digits_npz: Path, tmp_path: Path) -> None:
    ds = load_dataset(digits_npz, size=16)
    with pytest.raises(ConfigError, match="channel"):
        train(ModelConfig(width=4, depth=1, in_channels=3), _tc(epochs=1), ds, tmp_path / "x", progress=False)


def test_bad_checkpoints_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    meta = json.loads((other / CONFIG).read_text())
    meta["model"]["width"] = 16  # another shape
    (other / CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(other)
    meta["model"]["width"], meta["model"]["arch"] = 8, "concat"  # another architecture
    (other / CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit the concat"):
        load_checkpoint(other)
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_checkpoint, tampered)
    data = bytearray((tampered / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (tampered / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tampered)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "garbage")


def test_ddp_with_two_gloo_processes(tmp_path: Path, digits_npz: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\n"
        "from addunet_edge.data import load_dataset\n"
        "from addunet_edge.model import ModelConfig\n"
        "from addunet_edge.training import TrainConfig, train\n"
        f"ds = load_dataset({str(digits_npz)!r}, size=16)\n"
        "train(ModelConfig(width=8, depth=2, num_classes=10), TrainConfig(epochs=2, batch_size=8, warmup_steps=2),"
        " ds, sys.argv[1], progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        str(script),
        str(tmp_path / "ddp"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_log(tmp_path / "ddp" / LOG)
    assert [r["epoch"] for r in rows] == [1, 2]  # only rank 0 logs
    # 84 training images, 2 ranks x batch 8: ceil(42 / 8) = 6 steps per epoch
    assert rows[-1]["step"] == 12
    model, _ = load_checkpoint(tmp_path / "ddp")
    assert np.isfinite(rows[-1]["val_psnr_db"])
    assert model.config.width == 8


def test_train_cli_plain_is_the_papers_blocks_and_refuses_contradictions(tmp_path: Path, digits_npz: Path) -> None:
    from typer.testing import CliRunner

    from addunet_edge.cli import app

    base = [
        "train",
        "--dataset",
        str(digits_npz),
        "--image-size",
        "16",
        "--width",
        "8",
        "--depth",
        "2",
        "--epochs",
        "1",
    ]
    res = CliRunner().invoke(app, [*base, "--plain", "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    model, _ = load_checkpoint(tmp_path / "plain")
    cfg = model.config
    assert (cfg.norm, cfg.bound, cfg.head_projection) == ("none", None, False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())

    res = CliRunner().invoke(app, [*base, "--no-head-projection", "--out", str(tmp_path / "noproj")])
    assert res.exit_code == 0, res.output
    cfg = load_checkpoint(tmp_path / "noproj")[0].config
    assert (cfg.norm, cfg.bound, cfg.head_projection) == ("batch", 4.0, False)

    res = CliRunner().invoke(app, [*base, "--plain", "--norm", "batch", "--out", str(tmp_path / "bad")])
    assert res.exit_code != 0
    assert "--plain" in res.output
    assert not (tmp_path / "bad" / CONFIG).exists()


def test_minutes_budget_is_replanned_from_the_time_left() -> None:
    from addunet_edge.training import plan_epochs

    tc = _tc(epochs=1000, minutes=30.0)
    # A slow first epoch (a busy machine) plans few epochs; once epochs get faster, the plan grows.
    assert plan_epochs(tc, 0, elapsed_s=120.0, last_epoch_s=120.0) == 1 + 14
    assert plan_epochs(tc, 5, elapsed_s=400.0, last_epoch_s=30.0) == 6 + 46
    # And shrinks when they get slower; never below the epochs already run, never above tc.epochs.
    assert plan_epochs(tc, 5, elapsed_s=400.0, last_epoch_s=300.0) == 6 + 4
    assert plan_epochs(tc, 9, elapsed_s=1900.0, last_epoch_s=60.0) == 10
    assert plan_epochs(_tc(epochs=8, minutes=30.0), 0, elapsed_s=1.0, last_epoch_s=1.0) == 8
    assert plan_epochs(_tc(epochs=8), 3, elapsed_s=1e9, last_epoch_s=1.0) == 8


def _resume_state_tensors(out: Path) -> dict[str, torch.Tensor]:
    """The weights and optimizer tensors of `out`'s resume state, read through the loader (layout-agnostic)."""
    from addunet_edge.training import param_groups
    from addunet_edge.training_state import load_last, optimizer_tensors

    model = build_model(TINY)
    opt = torch.optim.AdamW(param_groups(model, 1e-4), lr=1e-3)
    load_last(out / LAST, model, opt, TINY)
    return {**{f"model.{k}": v for k, v in model.state_dict().items()}, **optimizer_tensors(opt)[0]}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """A dozen short trainings: on a busy 2-core machine a second thread stalls them at every OpenMP barrier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_kill_at_any_write_of_the_resume_state_still_resumes_to_the_same_weights(
    tmp_path: Path, digits_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 freezes the disk as it is at that instant: copy the run folder just before every file-system
    change the state save makes (and once after it), then resume each copy. Every copy must resume, and end
    on the uninterrupted run's weights, log and resume state."""
    import hashlib
    import shutil

    import addunet_edge.training as training

    ds = load_dataset(digits_npz, size=16)
    tc = _tc(epochs=3)
    full = tmp_path / "full"
    snapshots: list[tuple[int, str, Path]] = []  # (epoch index being saved, change about to happen, copy)
    saving: list[int] = []

    def snapshot(what: str) -> None:
        if saving and saving[-1] > 0:  # the first save has no earlier state to fall back on
            copy = tmp_path / f"kill-{len(snapshots):02d}"
            shutil.copytree(full, copy)
            snapshots.append((saving[-1], what, copy))

    def watched(name: str) -> Callable[..., Any]:
        real = getattr(os, name)

        def change(*args: Any, **kwargs: Any) -> Any:
            snapshot(f"{name} {args[0]}")
            return real(*args, **kwargs)

        return change

    real_save = training.save_last

    def save(folder: Path, model: Any, opt: Any, mc: ModelConfig, tc_: TrainConfig, epoch: int, *rest: Any) -> None:
        saving.append(epoch)
        try:
            real_save(folder, model, opt, mc, tc_, epoch, *rest)
            snapshot("after the save")  # the save is complete; the kill lands before the loop goes on
        finally:
            saving.pop()

    # Every change a writer makes to a file's name goes through these (atomic writes end in os.replace).
    for name in ("replace", "rename", "unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, watched(name))
    monkeypatch.setattr(training, "save_last", save)
    train(TINY, tc, ds, full, progress=False)
    monkeypatch.undo()
    assert len({epoch for epoch, _, _ in snapshots}) == 2 and len(snapshots) >= 6, snapshots

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def log_without_times(out: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "epoch_s"} for r in read_log(out / LOG)]

    want_state = _resume_state_tensors(full)
    for epoch, what, copy in snapshots:
        where = f"killed while saving epoch {epoch + 1}, before {what}"
        train(TINY, tc, ds, copy, resume=True, progress=False)
        assert sha(copy / WEIGHTS) == sha(full / WEIGHTS), where
        got_state = _resume_state_tensors(copy)
        assert got_state.keys() == want_state.keys(), where
        assert all(torch.equal(got_state[k], want_state[k]) for k in want_state), where
        assert log_without_times(copy) == log_without_times(full), where


@pytest.mark.usefixtures("one_torch_thread")
def test_resume_reads_the_single_state_layout_of_older_versions_and_replaces_it(
    tmp_path: Path, digits_npz: Path
) -> None:
    import shutil

    ds = load_dataset(digits_npz, size=16)
    train(TINY, _tc(epochs=2), ds, tmp_path / "full", progress=False)
    old = tmp_path / "old"
    train(TINY, _tc(epochs=2), ds, old, progress=False)
    # Roll `old` back to epoch 1 as an older version left it: last/ holding state.json and both tensor files.
    for slot in ("a", "b"):
        state = json.loads((old / LAST / slot / "state.json").read_text())
        if state["epoch"] == 0:
            for f in (old / LAST / slot).iterdir():
                f.rename(old / LAST / f.name)
        shutil.rmtree(old / LAST / slot)
    (old / LAST / "current.json").unlink()
    # ...and its log killed in the middle of epoch 2's record: the record appended next must not be lost.
    first = (old / LOG).read_text().splitlines()[0]
    (old / LOG).write_text(first + '\n{"epoch": 2, "st')
    train(TINY, _tc(epochs=2), ds, old, resume=True, progress=False)
    assert (old / WEIGHTS).read_bytes() == (tmp_path / "full" / WEIGHTS).read_bytes()
    assert sorted(p.name for p in (old / LAST).iterdir()) == ["a", "current.json"]
    assert [r["epoch"] for r in read_log(old / LOG)] == [1, 2]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_fresh_run_killed_before_its_first_save_does_not_resume_the_old_run(
    tmp_path: Path, digits_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import addunet_edge.training as training

    ds = load_dataset(digits_npz, size=16)
    out = tmp_path / "r"
    train(TINY, _tc(epochs=1), ds, out, progress=False)

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_last", killed)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, _tc(epochs=1, seed=1), ds, out, progress=False)
    monkeypatch.undo()
    assert saved_state_dir(out) is None
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(TINY, _tc(epochs=1, seed=1), ds, out, resume=True, progress=False)
