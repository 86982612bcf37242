"""`bench`: latency, throughput, memory and energy of every artifact, with the PyTorch baseline in the same run."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._common import DeviceOpt, ThreadsOpt, command, console, err_console, parse_int_list, parse_sizes

BENCH_HELP = "\n\n".join(
    (
        "Time checkpoints, .onnx files and TensorRT plans side by side, with PyTorch eager fp32 always timed in "
        "the same run as the baseline (from --baseline, or the checkpoint an artifact's manifest names).",
        "For every batch and size: warm-up runs, then timed runs that alternate between engines (A B A B, in "
        "rounds of a few) until --iterations each or --seconds in all. Reported: latency min / median / p90 / "
        "p99 / max, images/s and megapixels/s, peak host RSS, device memory on CUDA, GMAC/s and the speed-up "
        "over PyTorch. TensorRT plans get two rows: GPU compute only, and end to end with the host-device "
        "copies. On a Jetson with tegrastats, average board power and energy per image are added.",
        "Speed is noisy on a shared machine: run it more than once before trusting a difference under ~10 %.",
    )
)


def register(app: typer.Typer) -> None:
    @command(app, "bench", models=("artifacts",), help=BENCH_HELP)
    def bench_command(
        ctx: typer.Context,
        artifacts: Annotated[
            list[Path], typer.Argument(help="Checkpoint folders (or a packaged model: photos), .onnx and .plan files.")
        ],
        baseline: Annotated[
            Path | None,
            typer.Option(
                "--baseline", help="Checkpoint folder timed as the PyTorch baseline (default: from manifests)."
            ),
        ] = None,
        batches: Annotated[str, typer.Option("--batches", help="Batch sizes to time, e.g. 1,8.")] = "1",
        sizes: Annotated[str, typer.Option("--sizes", help="Input sizes HxW to time, e.g. 256x256,512x512.")] = (
            "256x256"
        ),
        threads: ThreadsOpt = 0,
        warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs per engine and shape.")] = 3,
        iterations: Annotated[int, typer.Option("--iterations", help="Timed runs per engine and shape.")] = 20,
        seconds: Annotated[
            float | None,
            typer.Option("--seconds", help="Time budget per shape (all engines together), instead of --iterations."),
        ] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
        csv_out: Annotated[Path | None, typer.Option("--csv", help="Write one CSV line per row.")] = None,
        markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown table.")] = None,
        plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of latency against batch.")] = None,
        cuda_graph: Annotated[
            bool, typer.Option("--cuda-graph", help="Replay TensorRT plans through a captured CUDA graph.")
        ] = False,
        device: DeviceOpt = "cpu",
    ) -> None:
        from ..benchmarking import bench, render_table, write_reports

        result = bench(
            artifacts,
            baseline=baseline,
            batches=parse_int_list(batches, "--batches"),
            sizes=parse_sizes(sizes),
            threads=threads,
            warmup=warmup,
            iterations=iterations,
            seconds=seconds,
            device=device,
            cuda_graph=cuda_graph,
            progress=sys.stderr.isatty(),
            command=_command_line(ctx),
        )
        console.print(render_table(result, width=console.width))
        for note in result.notes:
            err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
        for path in write_reports(result, json=json_out, csv=csv_out, markdown=markdown_out, plot=plot_out):
            console.print(f"wrote {escape(str(path))}")


def _command_line(ctx: typer.Context) -> str:
    """The command as parsed (also right under a test runner, where sys.argv is the runner's own)."""
    parts = ctx.command_path.split()
    for name, value in ctx.params.items():
        if value is None or value is False:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if name == "artifacts":
            parts.extend(str(v) for v in values)
        elif value is True:
            parts.append(f"--{name.replace('_', '-')}")
        else:
            parts.extend(f"--{name.replace('_', '-')}={v}" for v in values)
    return shlex.join(parts)
