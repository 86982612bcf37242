"""`export`: a checkpoint to a parity-checked ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import command, console


def register(app: typer.Typer) -> None:
    @command(app, "export", models=("checkpoint",))
    def export_cmd(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder, or a packaged model: photos.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")] = Path("model.fp32.onnx"),
        tolerance: Annotated[float, typer.Option(help="Max abs error allowed against PyTorch.")] = 1e-4,
    ) -> None:
        """Export to ONNX (opset 18, through torch.export), check it, simplify it and prove it matches PyTorch."""
        from rich.table import Table

        from ..artifacts import output_lock
        from ..export import export_onnx

        with output_lock(out.parent):
            path, report = export_onnx(checkpoint, out, tolerance=tolerance)
        table = Table(title=f"parity of {path.name} against PyTorch (tolerance {tolerance:.0e})")
        for col in ("batch", "H x W", "denoised max |err|", "logits max |err|", "PSNR vs torch (dB)"):
            table.add_column(col, justify="right")
        for c in report.cases:
            table.add_row(
                str(c.batch),
                f"{c.height}x{c.width}",
                f"{c.denoised_max_abs_error:.2e}",
                f"{c.logits_max_abs_error:.2e}",
                f"{c.fidelity_psnr_db:.1f}",
            )
        console.print(table)
        console.print(f"[green]wrote[/] {path} (+ manifest)")
