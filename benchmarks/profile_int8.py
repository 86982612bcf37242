"""Where the time goes: ONNX Runtime's profiler on the fp32 and the int8 (cpu target) model, per operator type.

    python benchmarks/profile_int8.py [--checkpoint CKPT] [--width 32 --depth 4] [--size 256] [--threads 2]

Prints milliseconds per run for each op type (Conv, QLinearConv, QuantizeLinear, ...), summed over nodes
and averaged over the profiled runs, with each one's share of the model's total. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from _artifacts import make_artifacts
from rich.console import Console
from rich.table import Table


def profile_ops(onnx_path: Path, shape: tuple[int, ...], threads: int, runs: int, warmup: int) -> dict[str, float]:
    """op type -> kernel milliseconds per run, from ONNX Runtime's own profiler (warm-up runs excluded)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(warmup):  # before profiling starts, so one-off allocations stay out of the figures
        session.run(None, {"noisy": x})
    opts_prof = ort.SessionOptions()
    opts_prof.intra_op_num_threads, opts_prof.inter_op_num_threads = threads, 1
    opts_prof.enable_profiling = True
    opts_prof.profile_file_prefix = str(onnx_path.with_suffix("")) + ".profile"
    session = ort.InferenceSession(str(onnx_path), sess_options=opts_prof, providers=["CPUExecutionProvider"])
    for _ in range(warmup + runs):
        session.run(None, {"noisy": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    # One "model_run" event per run; kernel events carry the op type in args.op_name.
    run_starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first_timed = run_starts[warmup] if len(run_starts) > warmup else 0
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first_timed:
            per_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3 / runs
    return dict(per_op)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="addunet-profile-") as tmp:
        _, fp32, int8 = make_artifacts(Path(tmp), args.width, args.depth, args.checkpoint, int8=True)
        assert int8 is not None
        shape = (1, 1, args.size, args.size)
        ops = {
            name: profile_ops(p, shape, args.threads, args.runs, args.warmup)
            for name, p in (("fp32", fp32), ("int8", int8))
        }
    totals = {k: sum(v.values()) for k, v in ops.items()}
    table = Table(title=f"ONNX Runtime kernel time per run, 1x1x{args.size}x{args.size}, {args.threads} threads")
    table.add_column("op type")
    for k in ops:
        table.add_column(f"{k} ms", justify="right")
        table.add_column(f"{k} %", justify="right")
    names = sorted({n for v in ops.values() for n in v}, key=lambda n: -max(v.get(n, 0.0) for v in ops.values()))
    for n in names:
        cells = []
        for k, v in ops.items():
            ms = v.get(n)
            cells += ["-", "-"] if ms is None else [f"{ms:.2f}", f"{100 * ms / totals[k]:.1f}"]
        table.add_row(n, *cells)
    table.add_row("total", *[c for k in ops for c in (f"{totals[k]:.2f}", "100.0")], style="bold")
    console.print(table)
    console.print(f"int8 / fp32 kernel time: {totals['int8'] / totals['fp32']:.2f}")


if __name__ == "__main__":
    main()
