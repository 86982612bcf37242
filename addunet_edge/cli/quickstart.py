"""`quickstart`: the main job on the bundled data, end to end, in a few minutes on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import SeedOpt, command, console


def register(app: typer.Typer) -> None:
    @command(app, "quickstart")
    def quickstart_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything it makes.")] = Path(
            "runs/quickstart"
        ),
        epochs: Annotated[
            int | None, typer.Option(min=1, help="Training epochs. Unset: the digits recipe's default.")
        ] = None,
        seed: SeedOpt = 0,
        threads: Annotated[
            int, typer.Option(help="CPU threads for training and the benchmark (pinned: it changes the weights).")
        ] = 2,
        iterations: Annotated[int, typer.Option(help="Timed runs per artifact in the benchmark.")] = 20,
        resume: Annotated[bool, typer.Option(help="Resume an interrupted training in --out.")] = False,
    ) -> None:
        """Train AddUNet on digits, export, fp16, int8, (TensorRT), validate and bench; reports under --out."""
        from ..artifacts import output_lock
        from ..quickstart import quickstart, render_summary
        from ..validation_results import budget_error

        with output_lock(out):
            result = quickstart(
                out,
                epochs=epochs,
                seed=seed,
                threads=threads,
                bench_iterations=iterations,
                console=console,
                resume=resume,
            )
        render_summary(result, out, console)
        if result.validation is not None and not result.validation.passed:
            raise budget_error(result.validation)
