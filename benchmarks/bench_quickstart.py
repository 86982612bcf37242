"""Run `bench` several times on one AddUNet (torch, ORT fp32, ORT int8) and print the spread of its speed-ups.

    python benchmarks/bench_quickstart.py [--checkpoint CKPT] [--width 32 --depth 4] [--size 256] [--threads 2]

A shared or thermally throttling machine moves single runs by tens of percent; the spread over repeats
says how far one figure can be trusted. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from _artifacts import make_artifacts
from rich.console import Console
from rich.table import Table

from addunet_edge.benchmarking import bench, render_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a fresh width x depth AddUNet")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 (cpu target) variant")
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="addunet-bench-") as tmp:
        ckpt, fp32, int8 = make_artifacts(Path(tmp), args.width, args.depth, args.checkpoint, not args.no_int8)
        artifacts = [fp32, *([int8] if int8 else [])]
        speedups: dict[str, list[float]] = defaultdict(list)
        medians: dict[str, list[float]] = defaultdict(list)
        for k in range(args.repeats):
            result = bench(
                artifacts,
                baseline=ckpt,
                batches=(args.batch,),
                sizes=((args.size, args.size),),
                threads=args.threads,
                iterations=args.iterations,
                progress=True,
            )
            console.print(f"[bold]run {k + 1} of {args.repeats}[/]")
            console.print(render_table(result, width=console.width))
            for row in result.rows:
                medians[row.label].append(row.latency_ms_median)
                if not row.baseline and row.speedup_vs_torch is not None:
                    speedups[row.label].append(row.speedup_vs_torch)

    table = Table(
        title=f"speed-up over PyTorch eager, {args.repeats} runs, {args.batch}x{args.size}x{args.size}, "
        f"{args.threads} threads"
    )
    for name in ("engine", "median ms (runs)", "speed-up min", "median", "max", "spread"):
        table.add_column(name, justify="left" if name == "engine" else "right")
    for label, lat in medians.items():
        runs = " / ".join(f"{v:.0f}" for v in lat)
        ratio = speedups.get(label)
        if not ratio:
            table.add_row(label, runs, "-", "1.00 (baseline)", "-", "-")
            continue
        mid = statistics.median(ratio)
        table.add_row(
            label,
            runs,
            f"{min(ratio):.2f}",
            f"{mid:.2f}",
            f"{max(ratio):.2f}",
            f"{(max(ratio) - min(ratio)) / mid:.0%}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
