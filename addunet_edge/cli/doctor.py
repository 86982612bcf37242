"""`addunet-edge doctor`: what this machine can run, and what to install for the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import command, console


def register(app: typer.Typer) -> None:
    @command(app, "doctor")
    def doctor(
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")
        ] = None,
        self_test: Annotated[
            bool,
            typer.Option(
                "--self-test",
                help="Train a small model, build fp16 / int8 plans, validate and bench them on this GPU.",
            ),
        ] = False,
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the self-test.")] = Path("runs/self-test"),
    ) -> None:
        """Report packages, GPU / Jetson, and which commands run on this machine; --self-test proves it."""
        from ..artifacts import atomic_write_json
        from ..doctor import collect_report, render_report

        report = collect_report()
        render_report(report, console)
        if json_out is not None:
            atomic_write_json(json_out, report)
            console.print(f"report written to {json_out}")
        if self_test:
            from ..artifacts import output_lock
            from ..selftest import self_test as run_self_test

            with output_lock(out):
                result = run_self_test(out, report, console)
            console.print(f"self-test {'passed' if result['passed'] else 'FAILED'}: {out / 'report.md'}")
            if not result["passed"]:
                raise typer.Exit(code=3)
