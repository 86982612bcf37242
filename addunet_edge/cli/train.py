"""`train`: train AddUNet or the concatenative baseline on bundled or your own data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import DatasetOpt, DeviceOpt, SeedOpt, command, console


def register(app: typer.Typer) -> None:
    @command(app, "train")
    def train_cmd(
        dataset: DatasetOpt = "digits",
        out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write.")] = Path("runs/train"),
        arch: Annotated[str, typer.Option(help="addunet | concat (the baseline U-Net).")] = "addunet",
        sigma: Annotated[str, typer.Option(help="Noise sigma (0-255), or a range like 5-55 for blind training.")] = "",
        epochs: Annotated[int, typer.Option(help="Number of epochs.")] = 0,
        minutes: Annotated[float, typer.Option(help="Time budget in minutes (0 = none).")] = 0.0,
        batch_size: Annotated[int, typer.Option(help="Batch size (0 = the recipe's).")] = 0,
        lr: Annotated[float, typer.Option(help="Peak learning rate, AdamW (0 = the recipe's).")] = 0.0,
        cls_weight: Annotated[
            float, typer.Option("--lambda", help="Weight of the classification loss (-1 = the recipe's).")
        ] = -1.0,
        width: Annotated[int, typer.Option(help="Channels at every level.")] = 0,
        depth: Annotated[int, typer.Option(help="Encoder blocks (= gated skips).")] = 0,
        kernel_sizes: Annotated[str, typer.Option(help="Kernel size per level, e.g. 3 or 5,3,3,3.")] = "",
        resampling: Annotated[str, typer.Option(help="none (full-rate) | stride (multi-scale).")] = "",
        residual: Annotated[bool | None, typer.Option("--residual/--direct", help="Predict the noise.")] = None,
        norm: Annotated[str, typer.Option(help="batch | none (none = the paper's plain blocks).")] = "",
        bound: Annotated[float, typer.Option(help="State clamp (0 = unbounded, the paper's plain blocks).")] = -1.0,
        head: Annotated[
            str, typer.Option(help="limited (linear) | full (MLP) | conv (two strided convs) classifier head.")
        ] = "limited",
        head_projection: Annotated[
            bool | None,
            typer.Option(
                "--head-projection/--no-head-projection", help="1x1 conv + BatchNorm before the classifier's pooling."
            ),
        ] = None,
        head_detach: Annotated[
            bool | None,
            typer.Option(
                "--head-detach/--no-head-detach",
                help="Stop-gradient: the classifier learns, but the trunk trains for reconstruction alone.",
            ),
        ] = None,
        plain: Annotated[
            bool,
            typer.Option(help="The paper's plain AddUNet: no BatchNorm, no state bound, no head projection."),
        ] = False,
        denoise_only: Annotated[bool, typer.Option(help="No classifier (num_classes = 0).")] = False,
        channels: Annotated[int, typer.Option(help="1 (gray) or 3 (RGB).")] = 1,
        image_size: Annotated[int, typer.Option(help="Image size for digits / class folders.")] = 32,
        patch_size: Annotated[int, typer.Option(help="Training patch size for photos.")] = 0,
        seed: SeedOpt = 0,
        device: DeviceOpt = "cpu",
        resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last epoch.")] = False,
    ) -> None:
        """Train a model; the checkpoint folder is --out (best model), with last/ for --resume."""
        from ..recipes import train_recipe

        summary = train_recipe(
            dataset=dataset,
            out=out,
            arch=arch,
            sigma=sigma or None,
            epochs=epochs or None,
            minutes=minutes or None,
            batch_size=batch_size or None,
            lr=lr or None,
            cls_weight=None if cls_weight < 0 else cls_weight,
            width=width or None,
            depth=depth or None,
            kernel_sizes=kernel_sizes or None,
            resampling=resampling or None,
            residual_output=residual,
            norm=norm or None,
            bound=bound,
            head=head,
            head_projection=head_projection,
            head_detach=head_detach,
            plain=plain,
            denoise_only=denoise_only,
            in_channels=channels,
            size=image_size,
            patch_size=patch_size or None,
            seed=seed,
            device=device,
            resume=resume,
        )
        _print_summary(out, summary)


def _print_summary(out: Path, summary: dict) -> None:
    test = summary.get("test", {})
    parts = [
        f"test PSNR {test.get('psnr_db', float('nan')):.2f} dB (noisy {test.get('noisy_psnr_db', float('nan')):.2f})"
    ]
    parts.append(f"SSIM {test.get('ssim', float('nan')):.4f}")
    if "accuracy" in test:
        parts.append(f"accuracy {100 * test['accuracy']:.1f} %")
    parts.append(f"{summary.get('train_time_s', 0):.0f} s")
    console.print(f"[green]trained[/] {out}: " + ", ".join(parts))
