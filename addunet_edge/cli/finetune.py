"""`finetune --qat`: quantization-aware fine-tuning of a checkpoint for one int8 target, and its report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._common import OutDir, SeedOpt, SigmaOpt, command, console


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _acc(scores: dict[str, Any]) -> str:
    acc = scores.get("accuracy")
    return "-" if acc is None else f"{100 * acc:.1f}%"


def report_table(report: dict[str, Any]) -> Table:
    """fp32 and int8 scores of the original and the fine-tuned model; drift is int8 minus fp32 (dB)."""
    table = Table(title=f"int8 ({report['target']}) on {report['eval_images']} val images, sigma {report['sigma']:g}")
    for col in ("model", "fp32 PSNR", "fp32 acc", "int8 PSNR", "int8 acc", "drift dB", "vs original fp32"):
        table.add_column(col, justify="right" if col != "model" else "left")
    orig, tuned = report["original"], report["finetuned"]
    o_int8 = orig.get("int8", {})
    table.add_row(
        "original",
        _fmt(orig["fp32"]["psnr_db"]),
        _acc(orig["fp32"]),
        _fmt(o_int8.get("psnr_db")),
        _acc(o_int8),
        _fmt(o_int8.get("drift_db"), "+.3f"),
        _fmt(o_int8.get("drift_db"), "+.3f"),
    )
    t_int8 = tuned["int8"]
    table.add_row(
        "QAT",
        _fmt(tuned["fp32"]["psnr_db"]),
        _acc(tuned["fp32"]),
        _fmt(t_int8["psnr_db"]),
        _acc(t_int8),
        _fmt(t_int8["drift_db"], "+.3f"),
        _fmt(t_int8.get("drift_vs_original_db"), "+.3f"),
    )
    return table


def register(app: typer.Typer) -> None:
    @command(app, "finetune")
    def finetune_cmd(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder to fine-tune.")],
        out: OutDir = Path("runs/qat"),
        qat: Annotated[bool, typer.Option("--qat", help="Quantization-aware fine-tuning (required).")] = False,
        target: Annotated[str, typer.Option(help="cpu (uint8 activations, ORT) | tensorrt (int8 symmetric).")] = "cpu",
        steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 150,
        lr: Annotated[float, typer.Option(help="Peak learning rate of the weights.")] = 2e-5,
        range_lr: Annotated[float, typer.Option(help="Learning rate of the activation ranges.")] = 5e-4,
        batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
        dataset: Annotated[
            str | None,
            typer.Option("--dataset", "-d", help="digits | photos | PATH; default: the checkpoint's dataset."),
        ] = None,
        sigma: SigmaOpt = 25.0,
        baseline: Annotated[
            bool, typer.Option(help="Also calibrate the original checkpoint the plain way, for comparison.")
        ] = True,
        seed: SeedOpt = 0,
    ) -> None:
        """Fine-tune with fake quantization, then write the checkpoint, learned ranges and the int8 ONNX."""
        from ..errors import ConfigError
        from ..qat import QATConfig, finetune_qat

        if not qat:
            raise ConfigError("finetune needs --qat (quantization-aware fine-tuning is the only mode)")
        cfg = QATConfig(
            target=target, steps=steps, lr=lr, range_lr=range_lr, batch_size=batch_size, sigma=sigma, seed=seed
        )
        result = finetune_qat(checkpoint, out, cfg, dataset=dataset, baseline=baseline, progress=True)
        console.print(report_table(result.report))
        console.print(f"wrote {result.checkpoint} (checkpoint), {result.ranges.name}, {result.int8_onnx.name}")
        console.print(f"report: {result.report_path}")
