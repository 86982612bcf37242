"""`calibrate`: an int8 Q/DQ ONNX (TensorRT or CPU flavour) from an fp32 ONNX or a checkpoint, on a dataset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._common import DatasetOpt, SeedOpt, SigmaOpt, command, console, err_console


def _fp32_path(out: Path) -> Path:
    name = out.name.replace(".int8", ".fp32") if ".int8" in out.name else out.with_suffix("").name + ".fp32.onnx"
    return out.with_name(name)


def _signed(loss_db: float | None) -> float | None:
    """The calibration library reports drift as a loss (positive = worse); users read it signed, as in
    validate (negative = worse)."""
    return None if loss_db is None else -loss_db


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def register(app: typer.Typer) -> None:
    @command(app, "calibrate")
    def calibrate_cmd(
        source: Annotated[Path, typer.Argument(help="fp32 .onnx, or a checkpoint folder (exported first).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="int8 ONNX to write.")] = Path("model.int8.onnx"),
        dataset: DatasetOpt = "digits",
        target: Annotated[str, typer.Option(help="tensorrt (symmetric, TensorRT placement) | cpu (ORT).")] = "tensorrt",
        method: Annotated[str, typer.Option(help="percentile | minmax | entropy | auto.")] = "percentile",
        percentile: Annotated[float, typer.Option(help="Percentile for --method percentile.")] = 99.999,
        size: Annotated[int, typer.Option(help="Number of calibration images.")] = 128,
        batch: Annotated[int, typer.Option(help="Calibration batch size.")] = 8,
        image_size: Annotated[int, typer.Option(help="Image size for digits / class folders.")] = 32,
        sigma: SigmaOpt = 25.0,
        exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Node to keep in float.")] = None,
        exclude_op: Annotated[list[str] | None, typer.Option("--exclude-op", help="Op type to keep in float.")] = None,
        max_psnr_drift: Annotated[
            float | None, typer.Option(help="PSNR drift budget (dB): keep sensitive nodes float to meet it.")
        ] = None,
        max_acc_drop: Annotated[float | None, typer.Option(help="Accuracy drop budget (points).")] = None,
        cache_dir: Annotated[Path | None, typer.Option(help="Folder for the ranges cache.")] = None,
        seed: SeedOpt = 0,
    ) -> None:
        """Calibrate on noisy training images and write an int8 ONNX with explicit Q/DQ plus its manifest."""
        from ..artifacts import output_lock
        from ..build import budget_eval_arrays, calibration_arrays
        from ..calibration import calibrate, fallback_to_budget
        from ..calibration.ranges import load_onnx, model_channels

        with output_lock(out.parent):
            onnx_path = source
            if source.is_dir():
                from ..export import export_onnx

                onnx_path, _ = export_onnx(source, _fp32_path(out))
                console.print(f"exported {onnx_path}")
            channels = model_channels(load_onnx(onnx_path)) or 1
            noisy, clean, labels = calibration_arrays(
                dataset, channels, count=size, sigma=sigma, seed=seed, size=image_size
            )
            common = {
                "target": target,
                "method": method,
                "percentile": percentile,
                "exclude_nodes": exclude or (),
                "exclude_op_types": exclude_op or (),
                "cache_dir": cache_dir if cache_dir is not None else out.parent / ".calibration-cache",
                "batch_size": batch,
            }
            if max_psnr_drift is not None or max_acc_drop is not None:
                if common["method"] == "auto":
                    common["method"] = "percentile"
                eval_noisy, eval_clean, eval_labels = budget_eval_arrays(
                    dataset, channels, sigma=sigma, seed=seed, size=image_size
                )
                report = fallback_to_budget(
                    onnx_path,
                    out,
                    noisy,
                    eval_noisy,
                    eval_clean,
                    labels=eval_labels,
                    max_psnr_drift_db=max_psnr_drift if max_psnr_drift is not None else math.inf,
                    max_acc_drop_pt=max_acc_drop if max_acc_drop is not None else 100.0,
                    **common,
                )
                for line in report.messages:
                    err_console.print(f"[yellow]warning:[/] {line}")
                before, after = _signed(report.before.drift_db), _signed(report.after.drift_db)
                console.print(
                    f"int8 drift {_fmt(before)} dB -> {_fmt(after)} dB, "
                    f"accuracy drop {_fmt(report.before.accuracy_drop_pt, '.2f')} -> "
                    f"{_fmt(report.after.accuracy_drop_pt, '.2f')} pt; float nodes: {report.float_nodes or 'none'}"
                )
            else:
                report = calibrate(onnx_path, out, noisy, clean, calib_labels=labels, **common)
                for line in report.messages:
                    err_console.print(f"[yellow]warning:[/] {line}")
                table = Table(title=f"int8 ({target}) vs fp32 on {report.scored_on} held-out images")
                for col in ("method", "PSNR dB", "drift dB", "agreement"):
                    table.add_column(col)
                for s in report.scores:
                    mark = " *" if s.label == report.method else ""
                    table.add_row(s.label + mark, _fmt(s.psnr_db), _fmt(_signed(s.drift_db)), _fmt(s.agreement, ".3f"))
                console.print(table)
        console.print(f"wrote {out}")
