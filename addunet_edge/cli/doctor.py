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
    ) -> None:
        """Report packages, GPU / Jetson, and which commands run on this machine."""
        from ..artifacts import atomic_write_json
        from ..doctor import collect_report, render_report

        report = collect_report()
        render_report(report, console)
        if json_out is not None:
            atomic_write_json(json_out, report)
            console.print(f"report written to {json_out}")
