"""`calibrate`: an int8 Q/DQ ONNX (TensorRT or CPU flavour) from an fp32 ONNX or a checkpoint, on a dataset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..calibration.int8 import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_SIGMA
from ..calibration.ranges import DEFAULT_PERCENTILE
from ..metrics import fmt_signed
from ._common import SigmaOpt, command, console, err_console, int8_budget
from .choices import CalibrationMethod, HighPrecision, Int8Target

if TYPE_CHECKING:
    from ..calibration import CalibrationReport, FallbackReport


def register(app: typer.Typer) -> None:
    @command(app, "calibrate", models=("source",))
    def calibrate_cmd(
        source: Annotated[
            Path, typer.Argument(help="fp32 .onnx, or a checkpoint folder or packaged model (exported first).")
        ],
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="int8 ONNX to write (default: <name>.int8.<target>.onnx beside it)."),
        ] = None,
        dataset: Annotated[
            str | None,
            typer.Option(help="Calibration data (default: what the model was trained on, as it records it)."),
        ] = None,
        target: Annotated[
            Int8Target, typer.Option(help="tensorrt (symmetric, TensorRT placement) | cpu (ORT).")
        ] = Int8Target.tensorrt,
        method: Annotated[
            CalibrationMethod, typer.Option(help="How ranges are found (auto: the least drift of each).")
        ] = CalibrationMethod.percentile,
        percentile: Annotated[float, typer.Option(help="Percentile for --method percentile.")] = DEFAULT_PERCENTILE,
        calibration_images: Annotated[
            int, typer.Option(help="Number of calibration images.")
        ] = DEFAULT_CALIBRATION_IMAGES,
        batch_size: Annotated[int, typer.Option(help="Calibration batch size.")] = 8,
        sigma: SigmaOpt = DEFAULT_CALIBRATION_SIGMA,
        exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Node to keep in float.")] = None,
        exclude_op: Annotated[list[str] | None, typer.Option("--exclude-op", help="Op type to keep in float.")] = None,
        max_psnr_drift: Annotated[
            float | None,
            typer.Option(help="Keep sensitive nodes float until drift >= -this dB at sigma 15, 25 and 50."),
        ] = None,
        max_acc_drop: Annotated[float | None, typer.Option(help="... and accuracy falls <= this (points).")] = None,
        cache_dir: Annotated[Path | None, typer.Option(help="Folder for the ranges cache.")] = None,
        high_precision: Annotated[
            HighPrecision | None, typer.Option(help="tensorrt target: what runs outside int8 (default fp16).")
        ] = None,
        dla: Annotated[bool, typer.Option("--dla", help="tensorrt target: place Q/DQ for a DLA core.")] = False,
    ) -> None:
        """Calibrate on noisy training images and write an int8 ONNX with explicit Q/DQ plus its manifest."""
        from ..artifacts import output_lock
        from ..build import Int8Settings, artifact_name, onnx_path_for
        from ..calibration.int8 import DataSpec

        folder = source if source.is_dir() else source.parent
        out = out or onnx_path_for(folder, artifact_name(source), "int8", target.value)
        data = DataSpec.of(source, dataset)  # before anything is written: a missing record is refused first
        settings = Int8Settings(
            target=target.value,
            method=method.value,
            percentile=percentile,
            calibration_images=calibration_images,
            sigma=sigma,
            budget=int8_budget(max_psnr_drift, max_acc_drop),
            exclude_nodes=tuple(exclude or ()),
            exclude_op_types=tuple(exclude_op or ()),
            cache_dir=cache_dir,
            batch_size=batch_size,
            high_precision=high_precision.value if high_precision is not None else None,
            dla=dla,
        )
        with output_lock(out.parent):
            onnx_path = source
            if source.is_dir():
                from ..export import export_onnx

                onnx_path, _ = export_onnx(source, onnx_path_for(out.parent, artifact_name(source), "fp32"))
                console.print(f"exported {onnx_path}")
            _print_report(settings.make(onnx_path, out, data), target.value)
        console.print(f"wrote {out}")


def _print_report(report: CalibrationReport | FallbackReport, target: str) -> None:
    """Warnings, then the budget's one-line summary or the table of methods (the chosen one starred)."""
    from ..calibration import FallbackReport

    for line in report.messages:
        err_console.print(f"[yellow]warning:[/] {line}")
    if isinstance(report, FallbackReport):
        console.print(escape(report.summary()))
        return
    table = Table(title=f"int8 ({target}) vs fp32 on {report.scored_on} held-out images")
    for col in ("method", "PSNR dB", "drift dB", "agreement"):
        table.add_column(col)
    for m, s in report.scores.items():
        mark = " *" if m == report.method else ""
        psnr_db = "-" if s.psnr_db is None else f"{s.psnr_db:.3f}"
        agree = "-" if math.isnan(s.agreement) else f"{s.agreement:.3f}"
        table.add_row(m + mark, psnr_db, fmt_signed(s.psnr_drift_db), agree)
    console.print(table)
