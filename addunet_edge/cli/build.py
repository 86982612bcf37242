"""`build`: a checkpoint or ONNX to an fp32/fp16/int8 ONNX Runtime artifact or TensorRT plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..build import DEFAULT_PROFILE_BATCH, DEFAULT_PROFILE_SIZES
from ._common import SigmaOpt, command, console, int8_budget
from .choices import Backend, CalibrationMethod, Int8Target, Precision


def register(app: typer.Typer) -> None:
    @command(app, "build", models=("source",))
    def build_cmd(
        source: Annotated[Path, typer.Argument(help="Checkpoint folder, ONNX file, or a packaged model: photos.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("engines"),
        precision: Annotated[Precision, typer.Option(help="What the model computes in.")] = Precision.fp16,
        backend: Annotated[
            Backend, typer.Option(help="auto: TensorRT where it and a GPU exist, else ONNX Runtime.")
        ] = Backend.auto,
        target: Annotated[
            Int8Target | None, typer.Option(help="int8 flavour: tensorrt (symmetric) | cpu (fast on ORT x86).")
        ] = None,
        dataset: Annotated[str | None, typer.Option(help="Calibration data (default: the training set).")] = None,
        method: Annotated[
            CalibrationMethod, typer.Option(help="int8 calibration (auto: the least drift of each).")
        ] = CalibrationMethod.percentile,
        calibration_images: Annotated[int, typer.Option(help="Calibration set size.")] = 256,
        sigma: SigmaOpt = 25.0,
        max_psnr_drift: Annotated[
            float | None,
            typer.Option(help="int8: keep sensitive nodes float until drift >= -this dB at sigma 15, 25 and 50."),
        ] = None,
        max_acc_drop: Annotated[float | None, typer.Option(help="int8: ... and accuracy falls <= this (pt).")] = None,
        profile_batch: Annotated[str, typer.Option(help="TensorRT profile batch min,opt,max.")] = DEFAULT_PROFILE_BATCH,
        profile_sizes: Annotated[str, typer.Option(help="TensorRT profile HxW min,opt,max.")] = DEFAULT_PROFILE_SIZES,
        workspace_mib: Annotated[int | None, typer.Option(help="TensorRT workspace limit (MiB).")] = None,
        timing_cache: Annotated[Path | None, typer.Option(help="TensorRT timing cache (loaded and saved).")] = None,
        opt_level: Annotated[int | None, typer.Option(help="TensorRT builder optimization level 0-5.")] = None,
        dla_core: Annotated[int | None, typer.Option(help="DLA core (Jetson), GPU fallback on.")] = None,
        version_compatible: Annotated[bool, typer.Option(help="Plan loadable by later TensorRT.")] = False,
        hardware_compatible: Annotated[bool, typer.Option(help="Plan loadable on Ampere+ GPUs.")] = False,
    ) -> None:
        """Make the precision ONNX (on demand) and, where TensorRT and a GPU exist, a strongly typed plan."""
        from ..artifacts import output_lock
        from ..build import build

        trt_options = None
        if backend is not Backend.onnxruntime:
            from ..engines.plan import BuildProfile

            trt_options = {
                "profile": BuildProfile.parse(profile_batch, profile_sizes),
                "workspace_mib": workspace_mib,
                "timing_cache": timing_cache,
                "optimization_level": opt_level,
                "dla_core": dla_core,
                "version_compatible": version_compatible,
                "hardware_compatible": hardware_compatible,
            }
        with output_lock(out):
            result = build(
                source,
                out,
                precision=precision.value,
                backend=backend.value,
                target=target.value if target is not None else None,
                dataset=dataset,
                method=method.value,
                calibration_images=calibration_images,
                sigma=sigma,
                budget=int8_budget(max_psnr_drift, max_acc_drop),
                trt_options=trt_options,
            )
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}")
        for tag, path in result.onnx.items():
            console.print(f"  {tag:5s} {path}")
        console.print(f"[green]built[/] {result.artifact} ({result.backend}, {precision.value})")
