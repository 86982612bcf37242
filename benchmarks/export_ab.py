"""Issue-19 A/B: the TorchScript ONNX exporter (legacy, opset 17) against the torch.export one (opset 18).

Both exports go through the package's own export_onnx (BatchNorm and gate folding, the exact decoder rewrite,
onnxslim, the parity proof); the legacy one swaps in the old `torch.onnx.export(..., dynamo=False)` call,
kept here only to measure against. From each fp32 ONNX the fp16 and both int8 targets are made with the code
the product uses (`make_precision_onnx`, the quickstart's drift budget). With --old, a folder of artifacts made
earlier (by older code) joins the table as it is. Everything is validated against the checkpoint at sigma
15, 25 and 50 and timed with ONNX Runtime at 1x1x256x256.

    python benchmarks/export_ab.py --checkpoint runs/quickstart/model --out runs/export_ab \
        [--old runs/quickstart/engines] [--threads 2] [--iterations 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console
from rich.table import Table

import addunet_edge.export as export_module
from addunet_edge.artifacts import read_manifest
from addunet_edge.benchmarking import bench
from addunet_edge.build import make_precision_onnx
from addunet_edge.engines.base import INPUT_NAME, OUTPUT_NAMES
from addunet_edge.export import export_onnx
from addunet_edge.quickstart import INT8_BUDGET
from addunet_edge.validation import validate

SIGMAS = (15.0, 25.0, 50.0)
KINDS = ("fp32", "fp16", "int8-cpu", "int8-tensorrt")
LEGACY_OPSET = 17


def _legacy_torch_export(model: Any, path: str | Path, in_channels: int, size_multiple: int = 1) -> None:
    """The TorchScript exporter call export.py made before issue 19 (traced at one size, dims named)."""
    import torch

    size = max(32, size_multiple * 2)
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        model,
        (torch.rand(1, in_channels, size, size),),
        str(path),
        dynamo=False,
        opset_version=LEGACY_OPSET,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: axes, OUTPUT_NAMES[0]: axes, OUTPUT_NAMES[1]: {0: "batch"}},
        do_constant_folding=True,
    )


@contextlib.contextmanager
def _legacy_exporter() -> Iterator[None]:
    saved = export_module.torch_to_onnx, export_module.OPSET
    export_module.torch_to_onnx = _legacy_torch_export  # type: ignore[assignment]
    export_module.OPSET = LEGACY_OPSET  # what the manifest records
    try:
        yield
    finally:
        export_module.torch_to_onnx, export_module.OPSET = saved


def _graph(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ops": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "nodes": len(model.graph.node),
        "input_dims": dims,
        "kib": round(path.stat().st_size / 1024, 1),
    }


def export_variant(checkpoint: Path, out: Path, exporter: str) -> dict[str, Any]:
    """Export with `exporter` ('legacy' or 'dynamo'), then the fp16 model."""
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / f"{checkpoint.name}.fp32.onnx"
    start = time.perf_counter()
    with _legacy_exporter() if exporter == "legacy" else contextlib.nullcontext():
        _, parity = export_onnx(checkpoint, fp32)
    info: dict[str, Any] = {"export_s": round(time.perf_counter() - start, 1), "parity": parity.max_abs_error}
    info["paths"] = {"fp32": fp32, "fp16": make_precision_onnx(fp32, out, "fp16", progress=False)}
    return info


def add_int8(info: dict[str, Any], target: str) -> None:
    fp32 = info["paths"]["fp32"]
    start = time.perf_counter()
    info["paths"][f"int8-{target}"] = make_precision_onnx(
        fp32, fp32.parent, "int8", target=target, budget=INT8_BUDGET, progress=False
    )
    info[f"int8-{target}_s"] = round(time.perf_counter() - start, 1)


def old_variant(folder: Path) -> dict[str, Any]:
    names = {"fp32": "fp32", "fp16": "fp16", "int8-cpu": "int8.cpu", "int8-tensorrt": "int8.tensorrt"}
    paths = {kind: next(folder.glob(f"*.{suffix}.onnx")) for kind, suffix in names.items()}
    parity = (read_manifest(paths["fp32"]) or {}).get("parity", {}).get("max_abs_error", float("nan"))
    return {"parity": parity, "paths": paths}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/quickstart/model"))
    ap.add_argument("--out", type=Path, default=Path("runs/export_ab"))
    ap.add_argument("--old", type=Path, default=None, help="a folder of artifacts made earlier, compared as is")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--bench-repeats", type=int, default=3, help="bench runs; the lowest median is kept")
    args = ap.parse_args()
    console = Console()

    variants: dict[str, dict[str, Any]] = {}
    if args.old is not None:
        variants["old files"] = old_variant(args.old)
    exporters = ("legacy", "dynamo")
    for exporter in exporters:
        console.print(f"[bold]{exporter}[/]: export, fp16")
        variants[exporter] = export_variant(args.checkpoint, args.out / exporter, exporter)
    # Every cpu int8 before any tensorrt one: ModelOpt (the tensorrt quantizer) edits ONNX Runtime's quantizer
    # registry for the whole process (it drops Relu, Concat, Pad, ... from it), so a cpu int8 made after a
    # tensorrt one in the same process is placed differently (the classifier's Relu stays float).
    for target in ("cpu", "tensorrt"):
        for exporter in exporters:
            console.print(f"[bold]{exporter}[/]: int8 {target}")
            add_int8(variants[exporter], target)
    for v in variants.values():
        v["graphs"] = {kind: _graph(p) for kind, p in v["paths"].items()}
        v["kept_float"] = {
            kind: (read_manifest(v["paths"][kind]) or {}).get("excluded_nodes", []) for kind in KINDS[2:]
        }

    artifacts = [p for v in variants.values() for p in v["paths"].values()]
    console.print("validate (sigma 15, 25, 50)")
    result = validate(args.checkpoint, artifacts, sigmas=SIGMAS, progress=False)
    rows = {(Path(r.artifact).resolve(), r.sigma): r for r in result.rows if not r.reference}
    # The lowest median over repeats, and the lowest single run: on a shared machine, load from other jobs
    # only ever adds time, so the lower figures are the ones that compare.
    ms: dict[Path, float] = {}
    ms_min: dict[Path, float] = {}
    for repeat in range(args.bench_repeats):
        console.print(f"bench {repeat + 1}/{args.bench_repeats} (1x1x256x256, {args.threads} threads)")
        timed = bench(
            artifacts,
            baseline=args.checkpoint,
            batches=(1,),
            sizes=((256, 256),),
            threads=args.threads,
            iterations=args.iterations,
            progress=False,
        )
        for r in timed.rows:
            key = Path(r.artifact).resolve()
            ms[key] = min(ms.get(key, float("inf")), r.latency_ms_median)
            ms_min[key] = min(ms_min.get(key, float("inf")), r.latency_ms_min)

    summary: dict[str, Any] = {}
    for name, v in variants.items():
        s: dict[str, Any] = {k: v[k] for k in ("parity", "graphs", "kept_float") if k in v}
        s.update({k: v[k] for k in v if k.endswith("_s")})
        for kind, path in v["paths"].items():
            key = path.resolve()
            s[kind] = {
                "path": str(path),
                "ort_ms_median": ms.get(key),
                "ort_ms_min": ms_min.get(key),
                **{
                    f"sigma{int(sig)}": {
                        "drift_db": rows[key, sig].psnr_drift_db,
                        "acc_change_pt": rows[key, sig].accuracy_change_pt,
                        "max_abs_error": rows[key, sig].max_abs_error,
                    }
                    for sig in SIGMAS
                },
            }
        summary[name] = s
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_ab.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

    table = Table(title=f"export A/B on {args.checkpoint} (drift dB / accuracy change pt, negative = worse)")
    for col in (
        "exporter",
        "artifact",
        "opset",
        "nodes",
        "max err",
        *(f"σ{int(s)}" for s in SIGMAS),
        "ORT ms",
        "min ms",
    ):
        table.add_column(col, justify="left" if col in ("exporter", "artifact") else "right")
    for name, s in summary.items():
        for kind in KINDS:
            cell = s[kind]
            g = s["graphs"][kind]
            err = s["parity"] if kind == "fp32" else cell["sigma25"]["max_abs_error"]
            drift = [
                f"{cell[f'sigma{int(sig)}']['drift_db']:+.3f} / {cell[f'sigma{int(sig)}']['acc_change_pt']:+.1f}"
                for sig in SIGMAS
            ]
            ms_cell, min_cell = cell["ort_ms_median"], cell["ort_ms_min"]
            table.add_row(
                name,
                kind,
                str(g["opset"]),
                str(g["nodes"]),
                f"{err:.1e}",
                *drift,
                "-" if ms_cell is None else f"{ms_cell:.1f}",
                "-" if min_cell is None else f"{min_cell:.1f}",
            )
    console.print(table)
    for name, s in summary.items():
        console.print(f"[bold]{name}[/]")
        for kind in KINDS:
            console.print(f"  {kind}: {s['graphs'][kind]['ops']}  dims {s['graphs'][kind]['input_dims']}")
        console.print(f"  kept float: {s['kept_float']}")
    console.print(f"written: {args.out / 'export_ab.json'}")


if __name__ == "__main__":
    main()
