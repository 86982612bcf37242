"""Shared set-up for the benchmark scripts: a width/depth AddUNet checkpoint, its fp32 ONNX and a CPU int8 ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def calibration_images(count: int = 32, size: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random images plus Gaussian noise (sigma 25/255): enough to set int8 ranges for a speed test."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 1, size // 8, size // 8), dtype=np.float32)
    clean = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    return np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)


def make_artifacts(
    folder: Path, width: int = 32, depth: int = 4, checkpoint: Path | None = None, int8: bool = True
) -> tuple[Path, Path, Path | None]:
    """(checkpoint, fp32 ONNX, int8 ONNX for the cpu target or None); an untrained model when none is given.

    Speed does not depend on the weights, so a freshly initialised model times like a trained one.
    """
    import torch

    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.export import export_onnx
    from addunet_edge.model import ModelConfig, build_model

    folder.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = folder / f"addunet_w{width}_d{depth}"
        save_checkpoint(checkpoint, build_model(ModelConfig(width=width, depth=depth, num_classes=10)).eval())
    fp32, _ = export_onnx(checkpoint, folder / f"{checkpoint.name}.fp32.onnx")
    if not int8:
        return checkpoint, Path(fp32), None
    from addunet_edge.calibration import collect_ranges, quantize_int8

    ranges = collect_ranges(fp32, calibration_images(), method="percentile", progress=False)
    int8_path = quantize_int8(fp32, folder / f"{checkpoint.name}.int8.onnx", ranges, target="cpu")
    return checkpoint, Path(fp32), Path(int8_path)
