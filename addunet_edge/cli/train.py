"""`train`: train AddUNet or the concatenative baseline on bundled or your own data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ._common import DatasetOpt, DeviceOpt, SeedOpt, command, console

# The choices of the model's options (model.Arch, Resampling, Upsampling, Norm and HeadCapacity), spelled out
# here: importing the model would import torch into the start-up of every command. Typer lists and checks them.
Arch = Literal["addunet", "concat"]
Resampling = Literal["none", "stride"]
Upsampling = Literal["transposed", "bilinear"]
Norm = Literal["batch", "none"]
Head = Literal["limited", "full", "conv"]
# An unset option (None) takes the recipe's value for the dataset, or the model's default where it has none.


def register(app: typer.Typer) -> None:
    @command(app, "train")
    def train_cmd(
        dataset: DatasetOpt = "digits",
        out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write.")] = Path("runs/train"),
        arch: Annotated[Arch, typer.Option(help="The model; concat is the baseline U-Net.")] = "addunet",
        sigma: Annotated[
            str | None,
            typer.Option(help="Noise sigma (0-255), or a range like 5-55 for blind training. Unset: the recipe's."),
        ] = None,
        epochs: Annotated[
            int | None,
            typer.Option(min=1, help="Number of epochs. Unset: the recipe's (and its --minutes, if it has one)."),
        ] = None,
        minutes: Annotated[
            float | None,
            typer.Option(help="Time budget in minutes. Unset: the recipe's if --epochs is unset too, else none."),
        ] = None,
        batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size. Unset: the recipe's.")] = None,
        lr: Annotated[float | None, typer.Option(help="Peak learning rate, AdamW. Unset: the recipe's.")] = None,
        cls_weight: Annotated[
            float | None,
            typer.Option("--lambda", min=0.0, help="Weight of the classification loss. Unset: the recipe's."),
        ] = None,
        width: Annotated[int | None, typer.Option(min=1, help="Channels at every level. Unset: the recipe's.")] = None,
        depth: Annotated[
            int | None, typer.Option(min=1, help="Encoder blocks (= gated skips). Unset: the recipe's.")
        ] = None,
        kernel_sizes: Annotated[
            str | None, typer.Option(help="Kernel size per level, e.g. 3 or 5,3,3,3. Unset: the recipe's.")
        ] = None,
        resampling: Annotated[
            Resampling | None, typer.Option(help="none: full-rate; stride: multi-scale. Unset: the recipe's.")
        ] = None,
        upsampling: Annotated[
            Upsampling | None,
            typer.Option(help="With stride: transposed conv, or bilinear + the decoder's convs. Unset: the recipe's."),
        ] = None,
        unshuffle: Annotated[
            int | None,
            typer.Option(min=1, max=4, help="Pixel-unshuffle the input by 1, 2 or 4 (FFDNet). Unset: the recipe's."),
        ] = None,
        residual_output: Annotated[bool | None, typer.Option("--residual/--direct", help="Predict the noise.")] = None,
        norm: Annotated[
            Norm | None, typer.Option(help="none: the paper's plain blocks. Unset: the model's default, batch.")
        ] = None,
        bound: Annotated[
            float | None,
            typer.Option(
                min=0.0, help="State clamp; 0 = unbounded (the paper's plain blocks). Unset: the model's default, 4."
            ),
        ] = None,
        head: Annotated[
            Head, typer.Option(help="Classifier head: limited = linear, full = MLP, conv = two strided convs.")
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
            bool, typer.Option(help="The paper's plain AddUNet: no BatchNorm, no state bound, no head projection.")
        ] = False,
        denoise_only: Annotated[bool, typer.Option(help="No classifier (num_classes = 0).")] = False,
        in_channels: Annotated[int, typer.Option("--channels", help="1 (gray) or 3 (RGB).")] = 1,
        size: Annotated[int, typer.Option("--image-size", help="Image size for digits / class folders.")] = 32,
        patch_size: Annotated[
            int | None, typer.Option(min=1, help="Training patch size for photos. Unset: the recipe's, 64.")
        ] = None,
        seed: SeedOpt = 0,
        device: DeviceOpt = "cpu",
        resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last epoch.")] = False,
    ) -> None:
        """Train a model; the checkpoint folder is --out (best model), with last/ for --resume."""
        options = dict(locals())  # every option is the train_recipe keyword of the same name
        from ..recipes import train_recipe

        summary = train_recipe(**options)
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
