"""`triton`: add a plan or ONNX to a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..triton import DEFAULT_QUEUE_DELAY_US
from ._common import command, console, parse_int_list
from .choices import TritonKind


def register(app: typer.Typer) -> None:
    @command(app, "triton")
    def triton_cmd(
        artifact: Annotated[Path, typer.Argument(help="A .plan or .onnx made by addunet-edge (with its manifest).")],
        repo: Annotated[Path, typer.Option("--repo", help="The Triton model repository (created if missing).")],
        name: Annotated[
            str | None, typer.Option("--name", help="Model name (default: the file name, e.g. digits_fp16).")
        ] = None,
        version: Annotated[int, typer.Option("--version", help="Version folder to write.")] = 1,
        max_batch_size: Annotated[
            int | None,
            typer.Option("--max-batch-size", help="Largest batch Triton forms (default: the plan's max; ONNX 8)."),
        ] = None,
        preferred_batch: Annotated[
            str | None,
            typer.Option(
                "--preferred-batch", help="Dynamic batcher's preferred sizes, e.g. 4,8 (default: profile opt, max)."
            ),
        ] = None,
        queue_delay_us: Annotated[
            int, typer.Option("--queue-delay-us", help="Longest a request waits for company (microseconds).")
        ] = DEFAULT_QUEUE_DELAY_US,
        instances: Annotated[int, typer.Option("--instances", help="Model instances per device.")] = 1,
        kind: Annotated[
            TritonKind,
            typer.Option("--kind", help="auto: plans and most ONNX on the GPU, int8 cpu-target on the CPU."),
        ] = TritonKind.auto,
    ) -> None:
        """Write <repo>/<name>/config.pbtxt and <repo>/<name>/<version>/model.plan|model.onnx for Triton."""
        from ..triton import write_triton_model

        preferred = parse_int_list(preferred_batch, "--preferred-batch") if preferred_batch is not None else None
        model = write_triton_model(
            artifact,
            repo,
            name=name,
            version=version,
            max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred,
            queue_delay_us=queue_delay_us,
            instances=instances,
            kind=kind.value,
        )
        batching = ", ".join(str(b) for b in model.preferred_batch_sizes)
        console.print(f"{'wrote' if model.config_written else 'kept the same'} {model.config_path}")
        console.print(f"wrote {model.model_path}")
        console.print(
            f"model {model.name!r} version {model.version}: {model.platform}, {model.instances} instance(s) on "
            f"{model.kind.upper()}, max batch {model.max_batch_size}, preferred {batching}, "
            f"queue delay {model.queue_delay_us} µs"
        )
        for note in model.notes:
            console.print(f"[yellow]note:[/] {note}")
        console.print(f"serve it: tritonserver --model-repository={model.model_dir.parent.resolve()}")
