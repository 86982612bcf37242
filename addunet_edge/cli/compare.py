"""`compare` (our denoiser and its artifacts against BM3D, NL-means, TV, wavelet) and `study` (the paper's study)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ._common import DeviceOpt, SeedOpt, ThreadsOpt, command, console, parse_float_list


def _names(text: str, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise typer.BadParameter(f"{what} is empty")
    return names


def register(app: typer.Typer) -> None:
    @command(app, "compare")
    def compare_cmd(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (run with PyTorch).")],
        artifacts: Annotated[
            list[Path] | None, typer.Argument(help="Artifacts made from it (.onnx, .plan) to compare too.")
        ] = None,
        images: Annotated[
            str, typer.Option(help="Held-out bundled photos, comma-separated.")
        ] = "camera,coins,astronaut",
        sigma: Annotated[str, typer.Option(help="Noise sigmas (0-255), comma-separated.")] = "15,25,50",
        baselines: Annotated[str, typer.Option(help="Classical denoisers: bm3d,nlm,tv,wavelet (or 'none').")] = (
            "bm3d,nlm,tv,wavelet"
        ),
        crop: Annotated[int, typer.Option(help="Centre crop of this size (0 = whole images).")] = 0,
        seed: SeedOpt = 0,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
        report: Annotated[Path | None, typer.Option(help="Folder for compare.json, compare.md, crops.png.")] = None,
        device: DeviceOpt = "cpu",
        threads: ThreadsOpt = 0,
    ) -> None:
        """Our checkpoint and its artifacts against BM3D, NL-means, TV and wavelet denoising on held-out photos.

        Every method sees the same seeded noisy image; PSNR, SSIM and seconds per image are reported per
        sigma (mean over images, best in bold), and whether the checkpoint beats BM3D on camera.
        """
        from ..artifacts import atomic_write_json
        from ..compare import bm3d_verdict_lines, compare, summary_table, write_reports
        from ..engines import options_for

        def options(path: Path) -> dict[str, Any]:
            return options_for(path, device, threads)

        result = compare(
            checkpoint,
            artifacts or [],
            images=_names(images, "--images"),
            sigmas=parse_float_list(sigma, "--sigma"),
            baselines=[] if baselines.strip() == "none" else _names(baselines, "--baselines"),
            seed=seed,
            crop=crop or None,
            engine_options=options,
        )
        console.print(summary_table(result))
        for name, why in result.skipped.items():
            console.print(f"[yellow]skipped[/] {escape(name)}: {escape(why)}", soft_wrap=True)
        for line in bm3d_verdict_lines(result):
            console.print(line)
        if json_path is not None:
            atomic_write_json(json_path, result.to_dict())
            console.print(f"[green]wrote[/] {json_path}")
        if report is not None:
            paths = write_reports(result, report)
            console.print(f"[green]wrote[/] {', '.join(str(p) for p in paths.values())}")

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
        blocks: Annotated[str, typer.Option(help="paper (plain blocks) | deploy (BatchNorm, bounds).")] = "paper",
        limit: Annotated[int, typer.Option(help="Training images per epoch, for quick checks (0 = all).")] = 0,
        device: DeviceOpt = "cpu",
    ) -> None:
        """The paper's study in one command: AddUNet vs ConcatUNet, denoise-only and multi-task, over seeds.

        Re-running in the same --out skips runs that already finished and resumes interrupted ones.
        """
        from ..study import StudyConfig, run_study, study_table

        config = StudyConfig(
            out=out,
            minutes=minutes or None,
            seeds=seeds,
            lambdas=tuple(parse_float_list(lambdas, "--lambdas")),
            width=width,
            depth=depth,
            epochs=epochs or None,
            photos=photos,
            blocks=blocks,
            limit=limit or None,
            device=device,
        )
        result = run_study(config)
        console.print(study_table(result))
        for claim in result["claims"]:
            console.print(f"[bold]{escape(claim['title'])}[/]: {claim['verdict']}. {escape(claim['summary'])}")
        console.print(f"[green]wrote[/] {out / 'study.json'}, {out / 'report.md'}, {out / 'gates.png'}")
