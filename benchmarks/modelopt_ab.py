"""Issue-16 A/B: int8 for TensorRT made by NVIDIA ModelOpt (float16 outside the int8 ops) against our own former
Q/DQ placement (float32 outside them), with the same ranges and the same float nodes.

The ranges are the package's defaults: percentile 99.999 on 256 noisy training images at sigma 25. Each
variant is validated on ONNX Runtime (CPU) at sigma 15, 25 and 50 on the held-out test split, and its graph
is read: which tensors carry Q/DQ, how many nodes compute in int8 / float16 / float32, file size, opset.
Our placement was deleted when ModelOpt won; it is loaded from the last commit that had it (--ours-rev).

    python benchmarks/modelopt_ab.py runs/quickstart/model --fp32 runs/quickstart/engines/model.fp32.onnx \
        --out runs/modelopt_ab [--float-node /head/Conv]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console
from rich.table import Table

import addunet_edge.calibration
from addunet_edge.artifacts import manifest_path
from addunet_edge.calibration import CalibrationSet, collect_ranges, quantize_int8
from addunet_edge.calibration.int8 import DataSpec
from addunet_edge.export import export_onnx
from addunet_edge.validation import validate

ROOT = Path(__file__).resolve().parents[1]
# The last commit whose calibration/qdq.py made the tensorrt target with our own placement.
OURS_REV = "29ab1dfc7d33f41590ad7095fa55fe16ee3369e7"
SIGMAS = (15.0, 25.0, 50.0)
_NOT_COMPUTE = {"QuantizeLinear", "DequantizeLinear", "Cast", "Constant"}
_DTYPE = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.FLOAT: "fp32"}


def load_ours(rev: str) -> Callable[..., Path]:
    """quantize_int8 of calibration/qdq.py as it was at `rev`, imported beside today's calibration package
    (its helpers, in calibration.ranges then and in calibration.graph now, are unchanged)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:addunet_edge/calibration/qdq.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.replace("from .ranges import (", "from .graph import (")
    name = "addunet_edge.calibration._qdq_ours"
    module = types.ModuleType(name)
    module.__package__ = addunet_edge.calibration.__name__
    exec(compile(source, f"{rev[:8]}:addunet_edge/calibration/qdq.py", "exec"), module.__dict__)
    return module.quantize_int8


def graph_facts(path: Path) -> dict[str, Any]:
    """Quantized activation tensors, nodes by compute type, size and opset of one int8 ONNX."""
    model = onnx.load(str(path))
    graph = onnx.shape_inference.infer_shapes(model).graph
    types_ = {t.name: t.data_type for t in graph.initializer}
    for v in (*graph.input, *graph.output, *graph.value_info):
        types_[v.name] = v.type.tensor_type.elem_type
    producer = {o: n for n in graph.node for o in n.output}
    dq_out = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    inits = {t.name for t in graph.initializer}
    quantized = set()
    for n in graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        tensor = n.input[0]
        while tensor in producer and producer[tensor].op_type == "Cast":
            tensor = producer[tensor].input[0]  # name the float32 input, not its float16 cast
        if tensor not in inits:
            quantized.add(tensor)
    compute: Counter[str] = Counter()
    for n in graph.node:
        if n.op_type in _NOT_COMPUTE:
            continue
        if set(n.input) & dq_out:
            compute["int8"] += 1
        else:
            compute[_DTYPE.get(types_.get(n.output[0], 0), "other")] += 1
    return {
        "quantized_tensors": sorted(quantized),
        "int8_nodes": compute["int8"],
        "fp16_nodes": compute["fp16"],
        "fp32_nodes": compute["fp32"],
        "size_kib": path.stat().st_size / 1024,
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "outputs": [onnx.TensorProto.DataType.Name(o.type.tensor_type.elem_type) for o in model.graph.output],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--fp32", type=Path, help="its exported fp32 ONNX (default: export it into --out)")
    ap.add_argument("--out", type=Path, default=Path("runs/modelopt_ab"))
    ap.add_argument("--float-node", action="append", default=None, help="node kept float (default: /head/Conv)")
    ap.add_argument("--ours-rev", default=OURS_REV, help="commit whose calibration/qdq.py has our placement")
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    float_nodes = args.float_node if args.float_node is not None else ["/head/Conv"]
    console = Console()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.fp32.onnx"
    if args.fp32 is None:
        export_onnx(args.checkpoint, fp32)
    else:  # the int8 files must lie beside their source for validate to trace them to the checkpoint
        shutil.copy(args.fp32, fp32)
        shutil.copy(manifest_path(args.fp32), manifest_path(fp32))
    data = DataSpec.of(args.checkpoint)
    noisy, _, _ = data.calibration_arrays(args.images, 25.0)
    ranges = collect_ranges(fp32, CalibrationSet(noisy, name=data.source), "percentile", 99.999, progress=False)

    ours = load_ours(args.ours_rev)
    head = ", ".join(float_nodes)
    variants: dict[str, tuple[Callable[..., Path], dict[str, Any]]] = {
        f"ours fp32, float: {head}": (ours, {"exclude_nodes": float_nodes}),
        "ours fp32, nothing float": (ours, {}),
        f"modelopt fp16, float: {head}": (quantize_int8, {"exclude_nodes": float_nodes}),
        "modelopt fp16, nothing float": (quantize_int8, {}),
        f"modelopt fp32, float: {head}": (quantize_int8, {"exclude_nodes": float_nodes, "high_precision": "fp32"}),
        f"modelopt fp16 DLA, float: {head}": (quantize_int8, {"exclude_nodes": float_nodes, "dla": True}),
    }
    paths: dict[str, Path] = {}
    facts: dict[str, dict[str, Any]] = {}
    for i, (name, (fn, kw)) in enumerate(variants.items()):
        t0 = time.perf_counter()
        paths[name] = fn(fp32, out / f"v{i}.int8.tensorrt.onnx", ranges, target="tensorrt", **kw)
        facts[name] = {**graph_facts(paths[name]), "seconds": time.perf_counter() - t0}
    # ORT's WeightBiasQuantization pass (on at every optimisation level) quantizes conv biases to int32 with a
    # scale computed in the graph's float16, which overflows: the graph is run as written (as TensorRT reads
    # it), and once more as ORT optimises it by default, to show what that costs.
    literal = {"onnxruntime": {"optimization": "disable"}}
    result = validate(args.checkpoint, list(paths.values()), sigmas=SIGMAS, progress=False, engine_options=literal)
    rows = {(Path(r.artifact).name, r.sigma): r for r in result.rows if not r.reference}
    default = validate(args.checkpoint, list(paths.values()), sigmas=(25.0,), progress=False)
    ort_all = {Path(r.artifact).name: r for r in default.rows if not r.reference}

    table = Table(title=f"int8 for TensorRT on ORT CPU, {data.source} test split")
    for col in ("variant", *(f"drift σ{s:g} dB" for s in SIGMAS), "acc. change pt σ15/25/50"):
        table.add_column(col)
    table.add_column("σ25 drift / acc., ORT optimised")
    for col in ("Q/DQ tensors", "int8 / fp16 / fp32 nodes", "KiB", "opset", "s"):
        table.add_column(col, justify="right")
    report = []
    for name, path in paths.items():
        r = [rows[(path.name, s)] for s in SIGMAS]
        f = facts[name]
        table.add_row(
            name,
            *(f"{x.psnr_drift_db:+.3f}" for x in r),
            " / ".join(f"{x.accuracy_change_pt:+.2f}" for x in r),
            f"{ort_all[path.name].psnr_drift_db:+.3f} / {ort_all[path.name].accuracy_change_pt:+.2f}",
            str(len(f["quantized_tensors"])),
            f"{f['int8_nodes']} / {f['fp16_nodes']} / {f['fp32_nodes']}",
            f"{f['size_kib']:.0f}",
            str(f["opset"]),
            f"{f['seconds']:.1f}",
        )
        report.append(
            {
                "variant": name,
                "file": path.name,
                **f,
                "rows": [x.to_dict() for x in r],
                "ort_optimised_sigma25": ort_all[path.name].to_dict(),
            }
        )
    Console(width=max(console.width, 200)).print(table)
    names = list(paths)
    a, b = set(facts[names[0]]["quantized_tensors"]), set(facts[names[2]]["quantized_tensors"])
    console.print(f"Q/DQ only in '{names[0]}': {sorted(a - b) or 'none'}")
    console.print(f"Q/DQ only in '{names[2]}': {sorted(b - a) or 'none'}")
    (out / "modelopt_ab.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
