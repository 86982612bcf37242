"""Shared set-up for the benchmark scripts: a width/depth AddUNet checkpoint, its fp32 ONNX and a CPU int8 ONNX."""

from __future__ import annotations

from pathlib import Path


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
    from addunet_edge.calibration.int8 import DataSpec, make_int8

    # The package's one int8 path. Speed does not depend on the ranges, so digits serve any gray model here.
    int8_path = folder / f"{checkpoint.name}.int8.cpu.onnx"
    make_int8(fp32, int8_path, DataSpec("digits", in_channels=1), target="cpu", calibration_images=32, progress=False)
    return checkpoint, Path(fp32), int8_path
