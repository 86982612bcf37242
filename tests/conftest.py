"""Shared fixtures: tiny models, tiny datasets written to disk, and a tiny trained checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

# Two cores: keep torch and onnxruntime from oversubscribing them in every test process.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# A shell that starts pytest in the background (`cmd &` without job control) leaves SIGINT ignored, and Python
# then installs no KeyboardInterrupt handler: the Ctrl-C tests would fail for the shell's sake, and children
# would inherit the ignore. Give the suite what a terminal gives it (seen: CI launched with `nohup ... &`).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 real digits (16x16, 10 classes) as an .npz, like a user's own data."""
    from addunet_edge.data import load_digits_images

    images, labels = load_digits_images(size=16)
    path = tmp_path_factory.mktemp("data") / "digits16.npz"
    np.savez(path, images=(images[:120, 0] * 255).astype(np.uint8), labels=labels[:120])
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, digits_npz: Path) -> Path:
    """A width-8, depth-2 AddUNet trained for two epochs on the tiny digits set."""
    from addunet_edge.data import load_dataset
    from addunet_edge.model import ModelConfig
    from addunet_edge.training import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    ds = load_dataset(digits_npz, size=16)
    train(
        ModelConfig(width=8, depth=2, num_classes=10),
        TrainConfig(epochs=2, batch_size=16, warmup_steps=2),
        ds,
        out,
        progress=False,
    )
    return out
