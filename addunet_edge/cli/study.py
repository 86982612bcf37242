"""`study`: the paper's study (AddUNet vs ConcatUNet, denoise-only and multi-task, over seeds)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._common import DeviceOpt, command, console, parse_float_list


class Blocks(str, Enum):
    """The block flavour of both architectures (`study.BLOCKS`)."""

    paper = "paper"
    deploy = "deploy"


def register(app: typer.Typer) -> None:
    @command(app, "study")
    def study_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="Study folder (runs/, study.json, report.md).")] = Path(
            "runs/study"
        ),
        minutes: Annotated[
            float, typer.Option(help="Total training budget, split evenly over runs (0 = none).")
        ] = 20.0,
        seeds: Annotated[int, typer.Option(help="Seeds per configuration.")] = 2,
        lambdas: Annotated[str, typer.Option(help="Classification weights for the digits runs (0 included).")] = (
            "0,0.05,0.2"
        ),
        width: Annotated[int, typer.Option(help="Channels at every level, both architectures.")] = 16,
        depth: Annotated[int, typer.Option(help="Levels, both architectures.")] = 4,
        epochs: Annotated[int, typer.Option(help="Epochs per run (0 = as many as the budget allows).")] = 0,
        photos: Annotated[bool, typer.Option(help="Also train denoise-only on photos.")] = True,
        blocks: Annotated[
            Blocks, typer.Option(help="paper (plain blocks) | deploy (BatchNorm, bounds).")
        ] = Blocks.paper,
        limit: Annotated[int, typer.Option(help="Training images per epoch, for quick checks (0 = all).")] = 0,
        device: DeviceOpt = "cpu",
    ) -> None:
        """The paper's study in one command: AddUNet vs ConcatUNet, denoise-only and multi-task, over seeds.

        Re-running in the same --out skips runs that already finished and resumes interrupted ones.
        """
        from ..study import StudyConfig, run_study
        from ..study_report import study_table

        config = StudyConfig(
            out=out,
            minutes=minutes or None,
            seeds=seeds,
            lambdas=tuple(parse_float_list(lambdas, "--lambdas")),
            width=width,
            depth=depth,
            epochs=epochs or None,
            photos=photos,
            blocks=blocks.value,
            limit=limit or None,
            device=device,
        )
        result = run_study(config)
        console.print(study_table(result))
        for claim in result["claims"]:
            console.print(f"[bold]{escape(claim['title'])}[/]: {claim['verdict']}. {escape(claim['summary'])}")
        console.print(f"[green]wrote[/] {out / 'study.json'}, {out / 'report.md'}, {out / 'gates.png'}")
