"""`validate`: drift of every artifact against the PyTorch checkpoint, with budgets and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._common import SelfEnsembleOpt, command, console, err_console, parse_float_list

VALIDATE_HELP = (
    "Run the PyTorch CHECKPOINT (the reference) and every ARTIFACT (fp32 / fp16 / int8 ONNX, TensorRT plans) "
    "on the same seeded noisy images of the dataset's held-out test split, and compare them.\n\n"
    "Per artifact and sigma: PSNR and SSIM against the clean image, PSNR drift against PyTorch (dB, negative "
    "= worse), fidelity (PSNR against PyTorch's output), max abs error, accuracy, its drop (points) and top-1 "
    "agreement. Default budgets per precision: fp32 0.01 dB / 0 pt, fp16 0.05 dB / 0.2 pt, int8 0.3 dB / 1 pt; "
    "--max-psnr-drift / --max-acc-drop replace them for every artifact.\n\n"
    "--self-ensemble runs every engine, the reference included, on the 8 rotations and mirrors of each image "
    "and averages them (drift is then ensemble against ensemble; about 8x the time); the PyTorch reference also "
    "runs once without it, to show its gain in PSNR and its cost in time.\n\n"
    "Exit code 0 when every artifact is within its budget, 3 when any breaks it, 2 when an artifact does not "
    "belong to the checkpoint (checked before anything runs)."
)


def register(app: typer.Typer) -> None:
    @command(app, "validate", models=("checkpoint",), help=VALIDATE_HELP)
    def validate_cmd(
        checkpoint: Annotated[
            Path,
            typer.Argument(help="Checkpoint folder (model.safetensors + config.json), or a packaged model: photos."),
        ],
        artifacts: Annotated[list[Path], typer.Argument(help=".onnx (fp32 / fp16 / int8) and .plan files.")],
        dataset: Annotated[
            str | None,
            typer.Option(
                "--dataset", "-d", help="digits | photos | PATH; default: the dataset recorded in the checkpoint."
            ),
        ] = None,
        sigma: Annotated[str, typer.Option("--sigma", help="Noise sigmas (0-255 scale), comma-separated.")] = (
            "15,25,50"
        ),
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
        report: Annotated[
            Path | None, typer.Option("--report", help="Folder for validation.json, report.md, crops.png, drift.png.")
        ] = None,
        max_psnr_drift: Annotated[
            float | None, typer.Option("--max-psnr-drift", help="Max PSNR loss (dB) for every artifact.")
        ] = None,
        max_acc_drop: Annotated[
            float | None, typer.Option("--max-acc-drop", help="Max accuracy drop (percentage points).")
        ] = None,
        limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N test images.")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size (capped by a plan's profile).")] = 64,
        seed: Annotated[
            int, typer.Option("--seed", help="Noise seed (the test split follows the checkpoint's recorded seed).")
        ] = 0,
        self_ensemble: SelfEnsembleOpt = False,
    ) -> None:
        from ..artifacts import output_lock
        from ..reports import ensemble_lines, rich_table, write_json, write_reports
        from ..validation import validate
        from ..validation_results import budget_error, resolve_budgets

        sigmas = parse_float_list(sigma, "--sigma")
        budgets = resolve_budgets(max_psnr_drift, max_acc_drop)
        result = validate(
            checkpoint,
            artifacts,
            dataset=dataset,
            sigmas=sigmas,
            limit=limit,
            batch=batch_size,
            seed=seed,
            budgets=budgets,
            progress=True,
            self_ensemble=self_ensemble,
        )
        for line in result.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
        console.print(rich_table(result))
        for line in ensemble_lines(result):
            console.print(f"self-ensemble: {escape(line)}", soft_wrap=True)
        if json_path is not None:
            write_json(result, json_path)
            console.print(f"wrote {json_path}")
        if report is not None:
            with output_lock(report):
                written = write_reports(result, report)
            console.print(f"wrote {', '.join(str(p) for p in written.values())}")
        if not result.passed:
            raise budget_error(result)
        console.print(f"[green]all {len(result.artifacts) - 1} artifact(s) within budget[/]")
