"""`info`: what a checkpoint is and learned (config, parameters, MACs, gates, metrics), or what a TensorRT
plan holds (precision and device of every layer, as read back after its build)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._common import command, console


def register(app: typer.Typer) -> None:
    @command(app, "info", models=("checkpoint",))
    def info_cmd(
        checkpoint: Annotated[
            Path, typer.Argument(help="Checkpoint folder, packaged model (photos), or a TensorRT .plan.")
        ],
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Config, parameters, MACs per pixel, learned gates and metrics of a checkpoint; for a plan, the
        precision and device (GPU or DLA) of every layer."""
        from ..checkpoint import checkpoint_info

        if checkpoint.suffix.lower() in (".plan", ".engine"):
            _plan_info(checkpoint, json_out)
            return
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


def _plan_info(plan: Path, json_out: bool) -> None:
    from ..engines.plan import PlanLayers, format_summary, read_plan_manifest
    from ..errors import ArtifactError

    manifest = read_plan_manifest(plan)
    if not isinstance(manifest.get("layers"), dict):
        raise ArtifactError(
            f"{plan}'s manifest has no layer read-back: it was built before addunet-edge read plans back"
        )
    layers = PlanLayers.from_dict(manifest["layers"])
    if json_out:
        console.print_json(json.dumps({"plan": str(plan), "precision": manifest.get("precision"), **layers.to_dict()}))
        return
    gpu = manifest.get("gpu") or {}
    console.print(
        f"{plan.name}: {manifest.get('precision')} plan, TensorRT {manifest.get('tensorrt_version')}, "
        f"{gpu.get('name')} (sm {gpu.get('compute_capability')}); {format_summary(layers.summary())}"
    )
    table = Table(title="layers as the engine inspector reads them")
    for col in ("layer", "type", "precision", "device"):
        table.add_column(col)
    for row in layers.table():
        table.add_row(*row)
    console.print(table)
    for note in layers.notes:
        console.print(f"[yellow]note:[/] {note}")
