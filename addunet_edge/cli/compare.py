"""`compare`: our denoiser and its artifacts against BM3D, NL-means, TV and wavelet denoising."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ._common import DeviceOpt, SeedOpt, SelfEnsembleOpt, ThreadsOpt, command, console, parse_float_list


def _names(text: str, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise typer.BadParameter(f"{what} is empty")
    return names


def register(app: typer.Typer) -> None:
    @command(app, "compare", models=("checkpoint",))
    def compare_cmd(
        checkpoint: Annotated[
            Path, typer.Argument(help="Checkpoint folder or packaged model (photos), run with PyTorch.")
        ],
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
        self_ensemble: SelfEnsembleOpt = False,
    ) -> None:
        """Our checkpoint and its artifacts against BM3D, NL-means, TV and wavelet denoising on held-out photos.

        Every method sees the same seeded noisy image; PSNR, SSIM and seconds per image are reported per
        sigma (mean over images, best in bold), and whether the checkpoint beats BM3D on each photo and sigma. With
        --self-ensemble, the checkpoint and each artifact also run as a self-ensemble ("+x8" rows, timed the same
        way: about 8x the time).
        """
        from ..artifacts import atomic_write_json
        from ..compare import compare
        from ..compare_report import ENSEMBLE_NOTE, bm3d_verdict_lines, summary_table, write_reports
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
            self_ensemble=self_ensemble,
        )
        console.print(summary_table(result))
        if self_ensemble:
            console.print(escape(ENSEMBLE_NOTE), soft_wrap=True)
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
