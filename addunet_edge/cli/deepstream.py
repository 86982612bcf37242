"""`deepstream-config`: a Gst-nvinfer configuration for a TensorRT plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..artifacts import atomic_write_text
from ._common import command, console, parse_sizes


def register(app: typer.Typer) -> None:
    @command(app, "deepstream-config")
    def deepstream_config_cmd(
        plan: Annotated[Path, typer.Argument(help="A TensorRT .plan built by `addunet-edge build`.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="The nvinfer configuration file to write.")],
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", help="nvinfer batch size (default: the profile's opt).")
        ] = None,
        size: Annotated[
            str | None,
            typer.Option(
                "--input-size",
                help="Network input HxW (only the profile's opt, which nvinfer runs; needed without one).",
            ),
        ] = None,
        gpu_id: Annotated[int, typer.Option("--gpu-id", help="GPU that nvinfer runs on.")] = 0,
    ) -> None:
        """Write a DeepStream Gst-nvinfer configuration for a plan (raw outputs attached as tensor meta)."""
        size_hw = None
        if size is not None:
            sizes = parse_sizes(size)
            if len(sizes) != 1:
                raise typer.BadParameter("--input-size takes one HxW")
            size_hw = sizes[0]
        from ..deepstream import deepstream_config

        text = deepstream_config(plan, batch_size=batch_size, size_hw=size_hw, gpu_id=gpu_id)
        atomic_write_text(out, text)
        console.print(f"wrote {out}")
