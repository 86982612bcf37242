"""Training end to end on tiny data: checkpoints, exact resume, DDP under torchrun, bad checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from addunet_edge.checkpoint import CONFIG, WEIGHTS, load_checkpoint, save_checkpoint
from addunet_edge.data import load_dataset
from addunet_edge.errors import CheckpointError, ConfigError
from addunet_edge.model import ModelConfig, build_model
from addunet_edge.training import LAST, LOG, TrainConfig, read_log, train

TINY = ModelConfig(width=8, depth=2, num_classes=10)


def _tc(**kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 16, "warmup_steps": 2, **kw})


def test_training_writes_checkpoint_log_and_improves(tiny_checkpoint: Path) -> None:
    _, meta = load_checkpoint(tiny_checkpoint)
    rows = read_log(tiny_checkpoint / LOG)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(len(r["gates"]) == 2 for r in rows)
    assert {"val_psnr_db", "val_ssim", "val_accuracy", "train_loss"} <= set(rows[0])
    test = meta["metrics"]["test"]
    assert test["psnr_db"] > test["noisy_psnr_db"] - 10  # sane, finite
    assert meta["model"] == TINY.to_dict()
    assert (tiny_checkpoint / LAST / "optimizer.safetensors").exists()


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
    state = json.loads((part / LAST / "state.json").read_text())
    assert state["epoch"] == 2
    # Simulate the interruption: a run killed after epoch 1 leaves last/ at epoch index 1.
    killed = tmp_path / "killed"
    _train_until(ds, killed, epochs=3, stop_after=2)
    train(TINY, _tc(epochs=3), ds, killed, resume=True, progress=False)
    full = load_tensors_of(tmp_path / "full" / LAST / "model.safetensors")
    resumed = load_tensors_of(killed / LAST / "model.safetensors")
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert [r["epoch"] for r in read_log(killed / LOG)] == [1, 2, 3]


def load_tensors_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _train_until(ds, out: Path, epochs: int, stop_after: int) -> None:
    """Run `train` and interrupt it (KeyboardInterrupt) once `stop_after` epochs are logged."""
    import addunet_edge.training as training

    real = training._append_log
    count = {"n": 0}

    def interrupting(path, record):
        real(path, record)
        count["n"] += 1

    def save_then_maybe_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        if count["n"] >= stop_after:
            raise KeyboardInterrupt

    real_save = training._save_last
    training._append_log, training._save_last = interrupting, save_then_maybe_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(TINY, _tc(epochs=epochs), ds, out, progress=False)
    finally:
        training._append_log, training._save_last = real, real_save


def test_resume_refuses_torn_last_checkpoint(tmp_path: Path, digits_npz: Path) -> None:
    ds = load_dataset(digits_npz, size=16)
    train(TINY, _tc(epochs=1), ds, tmp_path / "r", progress=False)
    (tmp_path / "r" / LAST / "optimizer.safetensors").write_bytes(b"torn")
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

    base = ["train", "--dataset", str(digits_npz), "--size", "16", "--width", "8", "--depth", "2", "--epochs", "1"]
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
