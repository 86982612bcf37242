"""`info`: what a checkpoint is and what it learned (config, parameters, MACs, gates, metrics)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._common import command, console


def register(app: typer.Typer) -> None:
    @command(app, "info")
    def info_cmd(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Config, parameters, MACs per pixel, learned gates and metrics of a checkpoint."""
        from ..checkpoint import checkpoint_info

        info = checkpoint_info(checkpoint)
        if json_out:
            console.print_json(json.dumps(info))
            return
        table = Table(title=f"checkpoint {checkpoint}", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in info.items():
            table.add_row(key, _fmt(value))
        console.print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return ", ".join(f"{v:.3f}" for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)
